"""Sweeps on a GPU: packs against the eager single run, and a whole sweep timed end to end.
bench/gpu_check.sh runs the stages on a GPU machine; bench_sweep.py's (b) runs `packs`.

    python bench/sweep_gpu.py packs --out DIR   # nanda2023 packs at E = 1, 64, 256
    python bench/sweep_gpu.py sweep --out DIR   # 256 members x 10k steps through Trainer.run
    python bench/sweep_gpu.py sweep --compile --out DIR  # the same, the model's forward compiled
    python bench/sweep_gpu.py compile --out DIR # torch.compile of the model at E = 256
    python bench/sweep_gpu.py table --out DIR   # the figures against the goals
    (each with --dry-run: tiny sizes on the CPU, to check the script itself)

packs: per E, the pack's step time (back-to-back steps, median of repeats) over E against the
eager single run (tests/engine/reference.py + torch.optim.AdamW) on the same device: the per-run
throughput ratio, in fp32, TF32 and bf16 autocast, with the peak memory per member. At the
largest E also the optimiser step alone (fused kernel vs the plain step, for several layouts
of the members' hyper-parameters), one evaluation, one set of member checkpoints, and a
profile of the step's kernels (profile.txt).

sweep: a phase-diagram sweep (lr {1e-3, 3e-3} x weight decay {0.5, 1, 2, 4} x seeds) of the
nanda2023 preset, trained as one pack with the preset's evaluations (every 100 steps) and
checkpoints (every 1000; serialised, then dropped), from building the specs to the summary.
It stops at --budget-s and reports the projected time; the fraction of members whose val_acc
reached 0.99 is the fraction that generalised. With --compile the Trainer compiles the model's
forward (worker/engine/compiled.py; in a dry run with the aot_eager backend, which needs no C
compiler): the first step, compiling included, counts once in the projection, not per step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from service.contract.spec import ExperimentSpec, deep_merge, spec_from_preset  # noqa: E402
from worker.engine.train import Trainer  # noqa: E402

GOAL_RATIO, GOAL_RATIO_MIN_E = 20.0, 64  # per-run throughput vs the eager run, at E >= 64
GOAL_SWEEP_S = 300.0  # 256 members x 10k steps
SWEEP_LRS, SWEEP_WEIGHT_DECAYS = (1e-3, 3e-3), (0.5, 1.0, 2.0, 4.0)
# --dry-run: the ci-small preset shrunk to seconds on a CPU
DRY = {
    "task": {"p": 11}, "model": {"d_model": 32, "n_heads": 4, "d_mlp": 64},
    "training": {"steps": 12, "eval_every": 4, "checkpoint_every": 6},
}
PRECISIONS = ("fp32", "tf32", "bf16")


def bench_spec(dry: bool, device: str, **overrides: Any) -> ExperimentSpec:
    base = deep_merge(DRY, overrides) if dry else overrides
    return spec_from_preset("ci-small" if dry else "nanda2023", **deep_merge(
        {"name": "bench", "analysis": {"every": None}, "training": {"device": device}}, base
    ))


def member_specs(dry: bool, device: str, n: int, precision: str = "fp32") -> list[ExperimentSpec]:
    training = {"tf32": precision != "fp32", "autocast_bf16": precision == "bf16"}
    return [
        bench_spec(dry, device, training={"seed": i, **training}, optimizer={"weight_decay": (0.0, 0.1, 0.3, 1.0)[i % 4]})
        for i in range(n)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[], Any], device: torch.device, steps: int, repeats: int) -> float:
    """Median over repeats of (steps back-to-back, as a run does them) / steps, after a warmup."""
    for _ in range(min(3, steps)):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on


def device_info(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, sms=props.multi_processor_count, memory_gib=props.total_memory / 2**30)
    else:
        info["name"] = "cpu"
    return info


def measure_packs(device_name: str, sizes: list[int], steps: int, repeats: int = 3, dry: bool = False,
                  profile_path: Path | None = None, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    """The packs figures (see the module docstring) as a dict."""
    from bench.bench_engine import ReferenceRun

    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    out: dict[str, Any] = {"env": device_info(device), "steps": steps, "repeats": repeats, "packs": []}
    single = Trainer(bench_spec(dry, device_name))
    reference = ReferenceRun(single)
    out["reference_ms"] = {}
    for precision in ("fp32", "tf32") if on_cuda else ("fp32",):
        set_tf32(precision == "tf32")
        out["reference_ms"][precision] = seconds_per_step(reference.step, device, steps, repeats) * 1e3
    del single, reference
    ref_ms = out["reference_ms"]["fp32"]
    for E in sizes:
        for precision in precisions if on_cuda else ("fp32",):
            if on_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            trainer = Trainer.for_members(member_specs(dry, device_name, E, precision))
            set_tf32(precision != "fp32")
            step_ms = seconds_per_step(trainer.train_step, device, steps, repeats) * 1e3
            row = {
                "E": E, "precision": precision, "step_ms": step_ms, "run_step_ms": step_ms / E,
                "ratio": ref_ms / (step_ms / E),
            }
            if on_cuda:
                row["peak_mib_per_member"] = torch.cuda.max_memory_allocated(device) / 2**20 / E
            out["packs"].append(row)
            print(pack_line(row), flush=True)
            if E == max(sizes) and precision == ("tf32" if on_cuda else "fp32"):
                out["largest"] = largest_pack_costs(trainer, device, steps, repeats, profile_path)
            del trainer
    set_tf32(False)
    return out


def measure_optimizer_layouts(device: torch.device, trainer: Trainer, runs_options: list[int], steps: int,
                              repeats: int) -> list[dict[str, Any]]:
    """The optimiser step of the trainer's parameter shapes, fused and plain, when the members'
    (lr, weight decay) come in `runs` runs along the ensemble (256: a new value every member;
    a sweep's grid with seeds innermost: one run per cell)."""
    from worker.engine.optim import EnsembleOptimizer

    E = trainer.n_members
    out = []
    for runs in runs_options:
        weight_decay = [float(e * runs // E) for e in range(E)]
        row: dict[str, Any] = {"E": E, "runs": runs}
        for fused in (False, True):
            params = [torch.nn.Parameter(torch.randn_like(p)) for p in trainer.model.parameters()]
            opt = EnsembleOptimizer(params, "adamw", [1e-3] * E, weight_decay, warmup_steps=10, fused=fused)
            opt.grad.normal_()
            row["fused_ms" if fused else "plain_ms"] = seconds_per_step(opt.step, device, steps, repeats) * 1e3
            del params, opt
        out.append(row)
        print(f"optimizer step at E={E}, {runs} runs of equal (lr, wd): plain {row['plain_ms']:.2f} ms, "
              f"fused {row['fused_ms']:.2f} ms", flush=True)
    return out


def largest_pack_costs(trainer: Trainer, device: torch.device, steps: int, repeats: int,
                       profile_path: Path | None) -> dict[str, Any]:
    """Where the largest pack's time goes besides the step: the optimiser step (fused vs
    plain), one evaluation, one set of member checkpoints; and a kernel profile."""
    out: dict[str, Any] = {"E": trainer.n_members}
    opt = trainer.optimizer
    fused = opt.fused
    for name, value in (("plain", None), ("fused", fused)):
        if name == "fused" and value is None:
            continue
        opt.fused = value
        out[f"optimizer_{name}_ms"] = seconds_per_step(opt.step, device, steps, repeats) * 1e3
    opt.fused = fused
    out["optimizer_layouts"] = measure_optimizer_layouts(
        device, trainer, sorted({r for r in (1, 8, 32, 64, trainer.n_members) if r <= trainer.n_members}),
        steps, repeats)
    sync(device)
    t0 = time.perf_counter()
    trainer.evaluate()
    out["evaluate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    blobs = trainer.member_checkpoints()
    out["member_checkpoints_s"] = time.perf_counter() - t0
    out["member_checkpoints_mib"] = sum(len(b) for b in blobs.values()) / 2**20
    del blobs
    if profile_path is not None:
        out["profile"] = write_profile(trainer, device, profile_path)
    return out


def write_profile(trainer: Trainer, device: torch.device, path: Path) -> str:
    """torch.profiler over 5 steps: the operators by their device (or CPU) time, to `path`."""
    try:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(5):
                trainer.train_step()
            sync(device)
        averages = prof.key_averages()
        for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
            try:
                table = averages.table(sort_by=key, row_limit=30)
                break
            except (KeyError, AttributeError, ValueError):
                continue
        path.write_text(f"E={trainer.n_members}, 5 steps, TF32\n{table}\n")
        return path.name
    except Exception as exc:  # noqa: BLE001 - a profile is a bonus, never the reason a run fails
        return f"failed: {type(exc).__name__}: {exc}"


def pack_line(row: dict[str, Any]) -> str:
    mem = f", peak {row['peak_mib_per_member']:.1f} MiB per member" if "peak_mib_per_member" in row else ""
    return (f"E={row['E']:4d} {row['precision']}: step {row['step_ms']:.2f} ms = {row['run_step_ms']:.4f} ms "
            f"per run-step, {row['ratio']:.1f}x the eager run{mem}")


def sweep_specs(dry: bool, device: str, members: int, steps: int, precision: str) -> list[ExperimentSpec]:
    """lr x weight decay cells, seeds innermost, `members` in all (cells in turn)."""
    cells = [(lr, wd) for lr in SWEEP_LRS for wd in SWEEP_WEIGHT_DECAYS]
    training = {"steps": steps, "tf32": precision != "fp32", "autocast_bf16": precision == "bf16"}
    specs = []
    for i in range(members):
        lr, wd = cells[i * len(cells) // members]
        specs.append(bench_spec(dry, device, name=f"m{i}", training={"seed": i, **training},
                                optimizer={"lr": lr, "weight_decay": wd}))
    return specs


def measure_sweep(device_name: str, members: int, steps: int, budget_s: float, precision: str,
                  dry: bool = False, compile_model: bool = False) -> dict[str, Any]:
    device = torch.device(device_name)
    torch.zeros(1, device=device)  # the CUDA context is the process's, not the sweep's
    set_tf32(False)
    counts = {"metric_rows": 0, "checkpoints": 0, "checkpoint_bytes": 0}
    first_step_at: list[float] = []

    def on_progress(step: int, total: int) -> None:
        if not first_step_at:
            first_step_at.append(time.perf_counter())

    def on_checkpoint(step: int, blob: bytes, meta: dict) -> None:
        counts["checkpoints"] += 1
        counts["checkpoint_bytes"] += len(blob)

    def on_metrics(rows: list) -> None:
        counts["metric_rows"] += len(rows)

    started = time.perf_counter()
    deadline = started + budget_s
    specs = sweep_specs(dry, device_name, members, steps, precision)
    trainer = Trainer.for_members(specs, compile_model=("aot_eager" if dry else True) if compile_model else False)
    built = time.perf_counter()
    summary = trainer.run(on_metrics=on_metrics, on_checkpoint=on_checkpoint, on_progress=on_progress,
                          should_stop=lambda: time.perf_counter() > deadline)
    sync(device)
    wall = time.perf_counter() - started
    done = summary["steps"]
    build_s = built - started
    # the first step (step 0's evaluation, and the compiling) once; the rest scaled to `steps`
    first_s = (first_step_at[0] - built) if first_step_at else 0.0
    projected = wall if done >= steps else build_s + first_s + (wall - build_s - first_s) * (steps - 1) / max(done - 1, 1)
    generalised = [m for m in summary["members"] if m.get("generalization_step") is not None]
    by_cell: dict[str, list[int]] = {}
    for spec, m in zip(specs, sorted(summary["members"], key=lambda m: m["member"])):
        cell = by_cell.setdefault(f"lr={spec.optimizer.lr:g} wd={spec.optimizer.weight_decay:g}", [0, 0])
        cell[0] += m.get("generalization_step") is not None
        cell[1] += 1
    return {
        "env": device_info(device), "members": members, "steps": steps, "precision": precision,
        "compile": compile_model, "steps_done": done, "stopped": summary["stopped"], "wall_s": wall,
        "build_s": build_s, "first_step_s": first_s, "projected_s": projected, **dynamo_counts(compile_model),
        "generalised": len(generalised), "generalised_fraction": len(generalised) / members,
        "memorised": sum(m.get("memorization_step") is not None for m in summary["members"]),
        "generalised_by_cell": by_cell, **counts,
    }


def dynamo_counts(compiled: bool) -> dict[str, int]:
    """How many graphs torch.compile made and how often it broke one (0 and 0: one whole graph)."""
    if not compiled:
        return {}
    from torch._dynamo.utils import counters

    return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}


def measure_compile(device_name: str, E: int, steps: int, repeats: int, dry: bool = False) -> dict[str, Any]:
    """What torch.compile of the model (forward and backward; the optimiser stays as it is) would
    give a TF32 pack of E: the compile time (first steps) and the step time, against eager."""
    device = torch.device(device_name)
    trainer = Trainer.for_members(member_specs(dry, device_name, E, "tf32"))
    set_tf32(True)
    eager_ms = seconds_per_step(trainer.train_step, device, steps, repeats) * 1e3
    trainer.model = torch.compile(trainer.model)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(2):
        trainer.train_step()
    sync(device)
    compile_s = time.perf_counter() - t0
    compiled_ms = seconds_per_step(trainer.train_step, device, steps, repeats) * 1e3
    return {"E": E, "eager_ms": eager_ms, "compiled_ms": compiled_ms, "compile_s": compile_s,
            "speedup": eager_ms / compiled_ms}


def table_lines(packs: dict[str, Any] | None, sweep: dict[str, Any] | None,
                compiled: dict[str, Any] | None = None) -> list[str]:
    lines = []
    env = (packs or sweep or {}).get("env", {})
    lines.append(f"GPU check: {env.get('name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda')}")
    if packs is None:
        lines.append("packs: no figures (stage failed or did not run)")
    else:
        refs = packs["reference_ms"]
        lines.append("eager single run: " + ", ".join(f"{p} {ms:.3f} ms/step" for p, ms in refs.items()))
        lines.append(f"{'E':>5} {'prec':>5} {'step ms':>9} {'per run ms':>11} {'ratio':>7} {'MiB/member':>11}  goal")
        for row in packs["packs"]:
            goal = ""
            if row["E"] >= GOAL_RATIO_MIN_E:
                goal = f">= {GOAL_RATIO:g}x: " + ("pass" if row["ratio"] >= GOAL_RATIO else "MISS")
            mem = row.get("peak_mib_per_member")
            lines.append(f"{row['E']:>5} {row['precision']:>5} {row['step_ms']:>9.2f} {row['run_step_ms']:>11.4f} "
                         f"{row['ratio']:>6.1f}x {'' if mem is None else f'{mem:.1f}':>11}  {goal}")
        big = packs.get("largest")
        if big:
            opt = ", ".join(f"{k[10:-3]} {v:.2f} ms" for k, v in big.items() if k.startswith("optimizer_") and k.endswith("_ms"))
            lines.append(f"E={big['E']}: optimizer step {opt}; one evaluation {big['evaluate_s']:.2f} s; "
                         f"member checkpoints {big['member_checkpoints_s']:.2f} s "
                         f"({big['member_checkpoints_mib']:.0f} MiB)")
            for row in big.get("optimizer_layouts", []):
                lines.append(f"    optimizer step, {row['runs']:>3} runs of equal (lr, wd): plain {row['plain_ms']:.2f} ms, "
                             f"fused {row['fused_ms']:.2f} ms")
    if compiled is not None:
        c = compiled
        lines.append(f"torch.compile of the model, E={c['E']} tf32: step {c['eager_ms']:.2f} ms eager, "
                     f"{c['compiled_ms']:.2f} ms compiled ({c['speedup']:.2f}x), compiling {c['compile_s']:.0f} s")
    if sweep is None:
        lines.append("sweep: no figures (stage failed or did not run)")
    else:
        s = sweep
        verdict = "pass" if s["projected_s"] < GOAL_SWEEP_S else "MISS"
        done = "" if s["steps_done"] >= s["steps"] else f", stopped at step {s['steps_done']} (budget), projected"
        how = s["precision"] + (f", compiled: {s['graphs']} graphs, {s['graph_breaks']} breaks" if s.get("compile") else "")
        lines.append(
            f"sweep {s['members']} x {s['steps']} steps ({how}): {s['projected_s']:.1f} s end to end{done} "
            f"(build {s['build_s']:.1f} s, first step {s.get('first_step_s', 0):.1f} s); goal < {GOAL_SWEEP_S:g} s: {verdict}; generalised "
            f"{s['generalised']}/{s['members']} ({s['generalised_fraction']:.0%}), memorised {s['memorised']}; "
            f"{s['checkpoints']} checkpoints ({s['checkpoint_bytes'] / 2**30:.2f} GiB), {s['metric_rows']} metric rows"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("packs", "sweep", "compile", "table"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the stage's JSON (and profile)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--sizes", default="1,64,256")
    parser.add_argument("--steps", type=int, default=20, help="packs: timed steps per repeat")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="packs: of " + ", ".join(PRECISIONS))
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--sweep-steps", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=240.0, help="sweep: stop here, project the rest")
    parser.add_argument("--precision", choices=PRECISIONS, default="tf32", help="sweep: matmul precision")
    parser.add_argument("--compile", action="store_true", help="sweep: torch.compile the model's forward")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.sizes, args.steps, args.members, args.sweep_steps = "1,2", 1, 4, 12
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark is for a GPU (use --dry-run to check it on a CPU)")
    if args.stage == "packs":
        figures = measure_packs(device, [int(x) for x in args.sizes.split(",")], args.steps,
                                repeats=1 if args.dry_run else 3, dry=args.dry_run,
                                profile_path=args.out / "profile.txt",
                                precisions=tuple(args.precisions.split(",")))
        (args.out / "packs.json").write_text(json.dumps(figures, indent=2) + "\n")
    elif args.stage == "sweep":
        figures = measure_sweep(device, args.members, args.sweep_steps, args.budget_s, args.precision, args.dry_run,
                                args.compile)
        (args.out / "sweep.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\n".join(table_lines(None, figures)[-1:]))
    elif args.stage == "compile":
        E = max(int(x) for x in args.sizes.split(","))
        figures = measure_compile(device, E, args.steps, 1 if args.dry_run else 3, args.dry_run)
        (args.out / "compile.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures))
    else:
        def read(name: str) -> dict | None:
            path = args.out / name
            return json.loads(path.read_text()) if path.exists() else None

        lines = table_lines(read("packs.json"), read("sweep.json"), read("compile.json"))
        (args.out / "table.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
