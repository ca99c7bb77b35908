"""How a CPU host's cores serve small grokking runs best: processes x torch threads, and the
pack size that is cheapest per member. The figures behind service/science/worker_plan.py and the CPU
pack size in service/science/sweeps.py.

    .venv/bin/python bench/bench_cores.py [--steps 300] [--rounds 2] [--layouts 1x1,1x2,2x1]
                                          [--pack-sizes 1,2,4,8,12]

(a) layouts: ci-small single runs (`--steps` steps, the preset's evaluations every 50 steps,
    no analysis), P processes at once with T torch threads each (PxT); prints the wall time of
    one run and the throughput in runs per second, as a ratio to one process with one thread.
    Rounds alternate the layouts so that a noisy machine hurts them alike.
(b) packs: ci-small packs of E members (Trainer.for_members, different seeds and weight
    decays; and packs whose members' training fractions differ, 0.3/0.5/0.7) on one thread, in
    one process, timed in interleaved blocks: CPU milliseconds per member-step (a train step
    plus an evaluation every 50 steps), and the ratio to E = 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def member_specs(n: int, steps: int):
    from service.contract.spec import spec_from_preset

    return [
        spec_from_preset(
            "ci-small", name=f"m{i}", analysis={"every": None},
            training={"device": "cpu", "seed": i, "steps": steps},
            optimizer={"weight_decay": (0.0, 1.0)[i % 2]},
        )
        for i in range(n)
    ]


def child(steps: int, threads: int, members: int) -> None:
    """One process: train `members` members (a pack when > 1); print its wall and CPU time."""
    import torch

    torch.set_num_threads(threads)
    from worker.engine.train import Trainer

    specs = member_specs(members, steps)
    trainer = Trainer(specs[0]) if members == 1 else Trainer.for_members(specs)
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.run()
    print(f"{time.perf_counter() - started:.4f} {time.process_time() - cpu_started:.4f}")


def run_children(
    processes: int, threads: int, steps: int, members: int = 1
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of `processes` children started together."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{v: str(threads) for v in THREAD_VARIABLES})
    argv = [sys.executable, __file__, "--child", str(steps), str(threads), str(members)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    times = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a {processes}x{threads} child failed ({proc.returncode})")
        wall, cpu = out.strip().splitlines()[-1].split()
        times.append((float(wall), float(cpu)))
    return times


def layouts(names: list[str], steps: int, rounds: int) -> None:
    shapes = [tuple(int(x) for x in name.split("x")) for name in names]
    walls: dict[tuple, list[float]] = {shape: [] for shape in shapes}
    for _ in range(rounds):
        for shape in shapes:
            walls[shape].append(max(wall for wall, _ in run_children(*shape, steps)))
    base = None
    print(f"(a) ci-small single runs, {steps} steps, evals every 50 (median of {rounds} rounds)")
    for (processes, threads), times in walls.items():
        wall = statistics.median(times)
        throughput = processes / wall
        base = base or (throughput if (processes, threads) == (1, 1) else None)
        ratio = f", {throughput / base:.2f}x 1x1" if base else ""
        print(f"    {processes} process(es) x {threads} thread(s): {wall:.2f} s per run, "
              f"{throughput:.3f} runs/s{ratio}  (rounds: {', '.join(f'{t:.2f}' for t in times)})")


def pack_costs(steps: int, rounds: int, sizes: list[int]) -> None:
    """In this process, on one thread: every pack size's trainer side by side, timed in
    interleaved blocks of steps, so that whatever else the machine does hurts each size alike.
    Cost per member-step = (CPU time of a train step + of one evaluation / eval_every) / E."""
    import torch

    torch.set_num_threads(1)
    from worker.engine.train import Trainer

    def trainer(specs):
        return Trainer(specs[0]) if len(specs) == 1 else Trainer.for_members(specs)

    fractions = (0.3, 0.5, 0.7)
    configs = {f"E={E:2d}, one training set": member_specs(E, steps) for E in sizes}
    for E in (3, 6):  # the sweep varies the training fraction inside a pack
        specs = member_specs(E, steps)
        configs[f"E={E:2d}, fractions 0.3/0.5/0.7"] = [
            spec.model_copy(update={"task": spec.task.model_copy(
                update={"train_fraction": fractions[i % 3]})}) for i, spec in enumerate(specs)]
    trainers = {name: trainer(specs) for name, specs in configs.items()}
    block, eval_every = 10, 50
    costs: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds * max(1, steps // block)):
        for name, t in trainers.items():
            started = time.process_time()
            for _ in range(block):
                t.train_step()
            step_s = (time.process_time() - started) / block
            started = time.process_time()
            t.evaluate()
            eval_s = time.process_time() - started
            costs[name].append((step_s + eval_s / eval_every) / t.n_members)
    single = statistics.median(costs[next(iter(costs))])
    print(f"(b) ci-small packs on one thread, CPU time per member-step (train step + evaluation "
          f"every {eval_every}), median of {len(costs[next(iter(costs))])} interleaved blocks of "
          f"{block} steps")
    for name, values in costs.items():
        cost = statistics.median(values)
        print(f"    {name}: {cost * 1e3:.2f} ms, {single / cost:.2f}x E=1 per member")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(ROOT))
        child(*(int(x) for x in sys.argv[2:5]))
        return
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layouts", default="1x1,1x2,2x1")
    parser.add_argument("--pack-sizes", default="1,2,4,8,12")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    if args.layouts:
        layouts(args.layouts.split(","), args.steps, args.rounds)
    if args.pack_sizes:
        pack_costs(args.steps, args.rounds, [int(x) for x in args.pack_sizes.split(",")])
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
