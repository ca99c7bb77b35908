"""bench/gpu_check.sh, the GPU machine's one prepared script, in its CPU dry run: every stage
runs, writes its figures and the table comes last, so the first minutes on a GPU go to measuring."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def run_check(*args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    cmd = ["bash", str(SCRIPT), *args] + (["--out", str(out)] if out is not None else [])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_writes_every_figure_and_ends_with_the_table(tmp_path):
    done = run_check("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {"gpu_check.log", "packs.json", "sweep.json", "table.txt", "profile.txt"} <= {p.name for p in tmp_path.iterdir()}
    packs = json.loads((tmp_path / "packs.json").read_text())
    assert [row["E"] for row in packs["packs"]] == [1, 2]
    assert all(row["step_ms"] > 0 and row["ratio"] > 0 for row in packs["packs"])
    assert packs["largest"]["member_checkpoints_mib"] > 0
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert (sweep["members"], sweep["steps_done"], sweep["stopped"]) == (4, 12, "completed")
    assert sweep["checkpoints"] == 4 * 2  # each member at steps 6 and 12
    table = (tmp_path / "table.txt").read_text().splitlines()
    last = done.stdout.rstrip().splitlines()[-1]
    assert last.startswith("gpu_check: ") and last.endswith("exit 0")
    assert table[-1] in done.stdout and table[-1].startswith("sweep 4 x 12 steps")
    assert "eager single run" in "\n".join(table)


def test_unknown_arguments_and_a_missing_output_folder_are_refused():
    done = run_check("--fast")
    assert done.returncode == 2 and "unknown argument '--fast'" in done.stderr
    done = run_check("--dry-run")
    assert done.returncode == 2 and "no output folder" in done.stderr


def test_only_sweep_with_compile_runs_the_compiled_sweep_alone(tmp_path):
    done = run_check("--dry-run", "--only-sweep", "--compile", out=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.log", "sweep.json", "table.txt"}
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert (sweep["compile"], sweep["steps_done"], sweep["stopped"]) == (True, 12, "completed")
    assert sweep["graphs"] >= 1 and sweep["first_step_s"] > 0
    table = (tmp_path / "table.txt").read_text().splitlines()
    assert table[-1].startswith("sweep 4 x 12 steps (tf32, compiled: ") and table[-1] in done.stdout
