"""The issue-17 sweep end to end on this machine: 12 ci-small members (train fraction
{0.3, 0.5, 0.7} x weight decay {0, 1} x 2 seeds) through the embedded service (`groklab up`,
its default worker plan), against the same 12 specs run one after another with `groklab train`
(torch's default threads), and against the single-threaded ideal (one `groklab train` process
per core at once, OMP_NUM_THREADS=1). Also one ci-small run through the service against one
`groklab train`. Run by `bench/bench_sweep.py --service`; each figure is wall time from start to
the last run done, side by side in one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
GRID = {"task.train_fraction": [0.3, 0.5, 0.7], "optimizer.weight_decay": [0, 1], "training.seed": [0, 1]}


def member_bodies() -> list[dict]:
    return [
        {"name": f"m{i}", "preset": "ci-small", "task": {"train_fraction": f},
         "optimizer": {"weight_decay": wd}, "training": {"seed": seed}}
        for i, (f, wd, seed) in enumerate(
            (f, wd, s) for f in GRID["task.train_fraction"] for wd in GRID["optimizer.weight_decay"]
            for s in GRID["training.seed"])
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROKLAB_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def train_loop(bodies: list[dict], folder: Path, **env: str) -> float:
    """`groklab train` of each body, one after another; wall seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, body in enumerate(bodies):
        spec = folder / f"spec{i}.json"
        spec.write_text(json.dumps(body))
        subprocess.run([sys.executable, "-m", "service.cli", "train", str(spec), "--out",
                        str(folder / f"run{i}"), "--no-progress"], env=_env(**env), check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def ideal(bodies: list[dict], folder: Path, cores: int) -> float:
    """One single-threaded `groklab train` loop per core at once; wall seconds."""
    shares = [bodies[i::cores] for i in range(cores)]
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(lambda k: train_loop(shares[k], folder / f"p{k}", OMP_NUM_THREADS="1"),
                      range(cores)))
    return time.perf_counter() - started


def through_service(folder: Path, submit) -> tuple[float, str]:
    """Start `groklab up`, submit, wait until every experiment is finished; (wall seconds from
    the submit, the worker plan line of the log)."""
    port = 18000 + os.getpid() % 1000
    log = folder / "up.log"
    up = subprocess.Popen([sys.executable, "-m", "service.cli", "up", "--port", str(port),
                           "--data-dir", str(folder / "data")], env=_env(), cwd=ROOT,
                          stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        token = next(line.rsplit(" ", 1)[-1] for line in log.read_text().splitlines() if "admin token" in line)
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        started = time.perf_counter()
        ids = submit(client)
        while True:
            done = [client.get(f"/api/v1/experiments/{i}").json()["status"] for i in ids]
            if all(s in ("succeeded", "failed", "cancelled") for s in done):
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        assert set(done) == {"succeeded"}, done
        plan = next((line for line in log.read_text().splitlines() if "training process" in line), "")
        return elapsed, plan.strip()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)


def submit_sweep(client: httpx.Client) -> list[str]:
    r = client.post("/api/v1/sweeps", json={"name": "bench-12", "base": {"preset": "ci-small"}, "grid": GRID})
    r.raise_for_status()
    print(f"    sweep: {r.json()['n_packs']} packs", flush=True)
    return r.json()["experiment_ids"]


def main() -> None:
    cores = os.cpu_count() or 1
    bodies = member_bodies()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("svc", "loop", "ideal", "one-svc", "one-loop"):
            (root / sub).mkdir()
        service_s, plan = through_service(root / "svc", submit_sweep)
        print(f"    service: {service_s:.1f} s ({plan})", flush=True)
        loop_s = train_loop(bodies, root / "loop")
        print(f"    groklab train loop: {loop_s:.1f} s", flush=True)
        ideal_s = ideal(bodies, root / "ideal", cores)
        print(f"    ideal ({cores} single-threaded processes): {ideal_s:.1f} s", flush=True)
        one_s, _ = through_service(
            root / "one-svc",
            lambda c: [c.post("/api/v1/experiments", json=bodies[0]).raise_for_status().json()["id"]])
        one_loop_s = train_loop(bodies[:1], root / "one-loop")
    print(f"12-member ci-small sweep through `groklab up` ({plan}): {service_s:.1f} s; "
          f"12 x `groklab train` one after another: {loop_s:.1f} s; {cores} single-threaded "
          f"processes at once: {ideal_s:.1f} s")
    print(f"  ratio service / train loop {service_s / loop_s:.2f} (goal <= 0.65); "
          f"service / single-threaded ideal {service_s / ideal_s:.2f}")
    print(f"one ci-small run: through the service {one_s:.1f} s, `groklab train` {one_loop_s:.1f} s, "
          f"ratio {one_s / one_loop_s:.2f} (goal <= 1.10)")
