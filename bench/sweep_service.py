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
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from worker.timing import PHASES

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


def through_service(folder: Path, submit, cpus: str | None = None) -> tuple[float, str]:
    """Start `groklab up` (pinned to the CPUs `cpus`, e.g. "0" or "0,1", if given), submit,
    wait until every experiment is finished; (wall seconds from the submit, the worker plan
    line of the log). The log stays in folder/up.log."""
    port = 18000 + os.getpid() % 1000
    log = folder / "up.log"
    pin = ["taskset", "-c", cpus] if cpus else []
    up = subprocess.Popen([*pin, sys.executable, "-m", "service.cli", "up", "--port", str(port),
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


def job_timings(log: str) -> list[dict[str, float]]:
    """The phase timings of every job in a worker log (worker/timing.py's log line)."""
    return [json.loads(line.split("; timing ", 1)[1]) for line in log.splitlines() if "; timing {" in line]


def plan_processes(plan: str) -> int:
    """The training processes of the worker plan line."""
    return int(re.search(r"(\d+) training process", plan).group(1))


def where_time_goes(folder: Path, wall_s: float, plan: str) -> str:
    """How the training processes spent the sweep's wall time: process-seconds (processes x
    wall) split into each job phase summed over the jobs, and the time outside any job (the
    claim and queue round trips, processes idle at the end while another finishes its pack)."""
    jobs = job_timings((folder / "up.log").read_text())
    capacity = plan_processes(plan) * wall_s
    total = {name: sum(job[name] for job in jobs) for name in (*PHASES, "other", "wall")}
    outside = capacity - total["wall"]
    lines = [f"  where the time goes: {len(jobs)} jobs on {plan_processes(plan)} process(es) x "
             f"{wall_s:.1f} s = {capacity:.1f} process-seconds; training steps "
             f"{total['steps']:.1f} s = {total['steps'] / capacity:.0%} of them"]
    lines.append("    " + ", ".join(f"{name} {total[name]:.1f} s ({total[name] / capacity:.1%})"
                                      for name in (*PHASES, "other"))
                 + f", outside any job {outside:.1f} s ({outside / capacity:.1%})")
    return "\n".join(lines)


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
        breakdown = where_time_goes(root / "svc", service_s, plan)
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
    print(breakdown)
    print(f"one ci-small run: through the service {one_s:.1f} s, `groklab train` {one_loop_s:.1f} s, "
          f"ratio {one_s / one_loop_s:.2f} (goal <= 1.10)")


SCALING_MEMBERS = 4  # >= 2C members for C = 1 and 2


def one_thread_reference(bodies: list[dict], folder: Path) -> float:
    """The members trained one after another by one process with one torch thread pinned to
    one core (train_local, the code behind `groklab train`); seconds of training, the
    interpreter's start and imports left out."""
    script = (
        "import json, sys, time, torch; torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "from service.contract.spec import ExperimentSpec\n"
        "from worker.engine.local import train_local\n"
        "bodies, out = json.loads(sys.argv[1]), Path(sys.argv[2])\n"
        "t0 = time.perf_counter()\n"
        "for i, body in enumerate(bodies):\n"
        "    train_local(ExperimentSpec.model_validate(body), out / f'run{i}')\n"
        "print(time.perf_counter() - t0)\n"
    )
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", script, json.dumps(bodies),
                           str(folder)], env=_env(OMP_NUM_THREADS="1"), cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def scaling() -> None:
    """A sweep of SCALING_MEMBERS ci-small members (seeds x weight decays, one training fraction)
    through `groklab up` pinned to C = 1 and C = 2 cores, against one process with one thread:
    speed-up = reference / sweep, goal >= 0.7 C."""
    grid = {"training.seed": [0, 1], "optimizer.weight_decay": [0, 1]}
    bodies = [{"name": f"s{i}", "preset": "ci-small", "training": {"seed": seed},
               "optimizer": {"weight_decay": wd}}
              for i, (seed, wd) in enumerate((s, w) for s in grid["training.seed"]
                                             for w in grid["optimizer.weight_decay"])]

    def submit(client: httpx.Client) -> list[str]:
        r = client.post("/api/v1/sweeps", json={"name": "bench-scaling", "base": {"preset": "ci-small"},
                                                "grid": grid})
        r.raise_for_status()
        return r.json()["experiment_ids"]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = one_thread_reference(bodies, root / "ref")
        print(f"    one process, one thread, {len(bodies)} members one after another: {reference:.1f} s",
              flush=True)
        for cores in (1, 2):
            folder = root / f"c{cores}"
            folder.mkdir()
            wall, plan = through_service(folder, submit, cpus=",".join(str(c) for c in range(cores)))
            speedup = reference / wall
            print(f"C={cores}: {len(bodies)}-member sweep through `groklab up` on {cores} core(s) "
                  f"({plan}): {wall:.1f} s; speed-up over one thread {speedup:.2f}x "
                  f"(goal >= {0.7 * cores:.1f}x: {'pass' if speedup >= 0.7 * cores else 'MISS'})")
            print(where_time_goes(folder, wall, plan), flush=True)
