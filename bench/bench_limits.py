"""What one caller's request costs the API process (in-process TestClient, SQLite), each part in
a fresh process so that one's memory does not hide another's:

  sweep:  a token at its active-job limit POSTs a 256-member nanda2023 sweep whose base carries
          a data_schedule of STAGES stages (5,000: over GROKLAB_MAX_DATA_SCHEDULE_STAGES; 256:
          within it); then an owner under its quota POSTs the same. Time to the answer and the
          process's peak RSS growth.
  export: 4 parallel exports (TransformerLens, one member each) of a ~200 MiB ensemble
          checkpoint (nanda2023, 76 members, Adam state). Peak RSS growth and time.

    python bench/bench_limits.py            # both, the sweep at 5,000 and 256 stages
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mib(key: str = "VmRSS") -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM starts again from the current RSS
        f.write("5")


def client_for(app, owner: str, scope: str = "write", **overrides):
    from fastapi.testclient import TestClient

    from service.access import auth

    with app.state.sessions() as s:
        token = auth.create_token(s, owner, scope, **overrides)[1]
    return TestClient(app, raise_server_exceptions=False,
                      headers={"Authorization": f"Bearer {token}"})


def bench_sweep(stages: int) -> None:
    from service.api.deps import get_enqueue
    from service.app import create_app
    from service.contract.settings import Settings
    from service.infra.db import migrate

    settings = Settings(data_dir=tempfile.mkdtemp(), worker_processes=2, worker_gpus=0,
                        reaper_interval_s=0)
    migrate(settings.resolved_database_url)
    app = create_app(settings)
    app.dependency_overrides[get_enqueue] = lambda: (lambda job_id, queue: None)
    at_quota = client_for(app, "alice", max_active_jobs=1)
    under_quota = client_for(app, "bob", max_active_jobs=1000)
    assert at_quota.post("/api/v1/experiments", json={"name": "x", "preset": "ci-small"}).status_code == 201
    schedule = [{"at_step": 1 + i, "train_fraction": round(0.29 - i * 0.00005, 6)}
                for i in range(stages)]
    sweep = {"name": "big", "base": {"preset": "nanda2023", "data_schedule": schedule},
             "grid": {"training.seed": list(range(16)),
                      "optimizer.weight_decay": [0.1 * k for k in range(1, 17)]}}
    for who, client in (("at its quota", at_quota), ("under its quota", under_quota)):
        before = rss_mib()
        reset_peak()
        start = time.perf_counter()
        r = client.post("/api/v1/sweeps", json=sweep)
        took = time.perf_counter() - start
        print(f"sweep, 256 members x {stages} stages, owner {who}: {r.status_code} after "
              f"{took:.2f} s, peak RSS +{rss_mib('VmHWM') - before:.0f} MiB", flush=True)


def build_checkpoint(folder: Path) -> None:
    from service import store
    from service.contract.settings import Settings
    from service.contract.spec import ExperimentSpec
    from service.infra.db import make_engine, make_sessionmaker, migrate
    from worker.engine.train import Trainer

    url = Settings(data_dir=folder).resolved_database_url
    migrate(url)
    spec = ExperimentSpec.model_validate({
        "name": "big", "preset": "nanda2023", "ensemble": {"size": 76},
        "training": {"steps": 10, "device": "cpu"}, "analysis": {"every": None}})
    blob = Trainer(spec).to_checkpoint()
    with make_sessionmaker(make_engine(url))() as s:
        experiment = store.create_experiment(s, spec, "none", owner="it")
        store.add_checkpoint(s, experiment.id, 0, blob, {})
    (folder / "id").write_text(experiment.id)
    print(f"checkpoint of {len(blob) / 2**20:.0f} MiB", flush=True)


def bench_export(folder: Path) -> None:
    from service.app import create_app
    from service.contract.settings import Settings

    app = create_app(Settings(data_dir=folder, reaper_interval_s=0))
    client = client_for(app, "it", "read")
    url = f"/api/v1/experiments/{(folder / 'id').read_text()}/checkpoints/0/export"
    before = rss_mib()
    reset_peak()
    codes: list[int] = []

    def export(member: int) -> None:
        codes.append(client.get(url, params={"member": member}, timeout=600).status_code)

    start = time.perf_counter()
    threads = [threading.Thread(target=export, args=(m,)) for m in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"4 parallel exports: {codes} after {time.perf_counter() - start:.1f} s, peak RSS "
          f"+{rss_mib('VmHWM') - before:.0f} MiB", flush=True)


def main() -> None:
    if len(sys.argv) > 1:  # one part, in this fresh process
        part, arg = sys.argv[1], sys.argv[2]
        {"sweep": lambda: bench_sweep(int(arg)), "build": lambda: build_checkpoint(Path(arg)),
         "export": lambda: bench_export(Path(arg))}[part]()
        return
    run = [sys.executable, __file__]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for stages in (5000, 256):
        subprocess.run([*run, "sweep", str(stages)], check=True, env=env)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([*run, "build", folder], check=True, env=env)
        subprocess.run([*run, "export", folder], check=True, env=env)


if __name__ == "__main__":
    main()
