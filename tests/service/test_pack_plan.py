"""How a sweep's members are cut into packs: on the CPU one pack per training process at the
member count that costs least per member; on a GPU as many as fit its memory budget."""
from __future__ import annotations

import pytest

from service.contract.settings import Settings
from service.contract.spec import Limits
from service.science.sweeps import CPU_PACK_SIZE, SweepSpec, cpu_pack_sizes, expand, plan_packs

BASE = {"preset": "ci-small", "training": {"steps": 100}}
GPU_BYTES = 40 * 2**30


def members(n: int, device: str = "cpu", **grid):
    sweep = SweepSpec(name="plan", base={**BASE, "training": {"steps": 100, "device": device}},
                      grid={"training.seed": list(range(n)), **grid})
    return expand(sweep, Limits.from_settings(Settings()), 1024)


def sizes(packs) -> list[int]:
    return [len(pack) for pack in packs]


@pytest.mark.parametrize(
    ("n", "processes", "best", "expected"),
    [
        (12, 2, 4, [3, 3, 3, 3]),  # two rounds of two packs, none above 4
        (12, 2, 8, [6, 6]),        # one pack per process
        (12, 2, CPU_PACK_SIZE, [3, 3, 3, 3]),
        (12, 1, 4, [4, 4, 4]),
        (8, 2, 4, [4, 4]),
        (9, 2, 4, [3, 2, 2, 2]),
        (3, 8, 4, [1, 1, 1]),      # fewer members than processes: one each
        (1, 16, 4, [1]),
        (100, 16, 4, [4] * 4 + [3] * 28),
        (0, 2, 4, []),
    ],
)
def test_cpu_packs_one_per_process_at_most_the_best_size(n, processes, best, expected):
    planned = cpu_pack_sizes(n, processes, best)
    assert planned == expected
    assert sum(planned) == n
    assert all(size <= best for size in planned)
    assert len(planned) % processes == 0 or len(planned) == n  # every round fills the processes


def test_a_cpu_sweep_is_packed_for_the_worker_processes():
    twelve = members(12)
    on_two = plan_packs(twelve, None, GPU_BYTES, 256, processes=2)
    assert sizes(on_two) == cpu_pack_sizes(12, 2)
    assert all(len(pack) <= CPU_PACK_SIZE for pack in on_two)
    # grid order kept (the packs cost the same), every member once
    assert [m.index for pack in on_two for m in pack] == list(range(12))
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, processes=16)) == [1] * 12
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, processes=1)) == cpu_pack_sizes(12, 1)


def test_the_largest_packs_come_first():
    """Full batch: a pack of a larger training fraction costs more per step; those packs lead,
    so that they start first and the small ones fill in behind them."""
    grid = members(2, **{"task.train_fraction": [0.3, 0.5, 0.7]})
    packs = plan_packs(grid, None, GPU_BYTES, 256, processes=2)
    fractions = [pack[0].spec.task.train_fraction for pack in packs]
    assert fractions == sorted(fractions, reverse=True) and set(fractions) == {0.3, 0.5, 0.7}
    assert sorted(m.index for pack in packs for m in pack) == list(range(6))


def test_auto_packs_for_the_cpu_unless_the_workers_have_gpus():
    twelve = members(12, device="auto")
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, processes=2)) == cpu_pack_sizes(12, 2)
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, processes=1, worker_gpus=1)) == [12]


def test_gpu_packs_fill_the_memory_budget():
    twelve = members(12, device="cuda")
    from service.contract.budgets import member_memory

    per_member = member_memory(twelve[0].spec).training
    assert sizes(plan_packs(twelve, None, 5 * per_member, 256, processes=1)) == [5, 5, 2]
    assert sizes(plan_packs(twelve, None, 5 * per_member, 256, processes=2)) == [5, 5, 2]
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 4, worker_gpus=1)) == [4, 4, 4]
    # all fit on one GPU: one pack per GPU process, so that every GPU trains
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, worker_gpus=1)) == [12]
    assert sizes(plan_packs(twelve, None, GPU_BYTES, 256, processes=4, worker_gpus=4)) == [3] * 4


def test_cpu_packs_share_a_training_set():
    """The issue's sweep: train fraction x weight decay x seed. On the CPU each pack holds
    members of one training fraction; on a GPU they may mix."""
    grid = {"task.train_fraction": [0.3, 0.5, 0.7], "optimizer.weight_decay": [0, 1]}
    twelve = members(2, **grid)
    packs = plan_packs(twelve, None, GPU_BYTES, 256, processes=2)
    assert sizes(packs) == cpu_pack_sizes(4, 2) * 3
    assert all(len({m.spec.task.train_fraction for m in pack}) == 1 for pack in packs)
    on_gpu = members(2, device="cuda", **grid)
    assert sizes(plan_packs(on_gpu, None, GPU_BYTES, 256, worker_gpus=1)) == [12]
    # a pack size asked for keeps the members in grid order, training sets mixed
    assert sizes(plan_packs(twelve, 6, GPU_BYTES, 256, processes=2)) == [6, 6]


def test_pack_size_asked_for_wins_and_groups_stay_apart():
    twelve = members(12)
    assert sizes(plan_packs(twelve, 5, GPU_BYTES, 256, processes=2)) == [5, 5, 2]
    assert sizes(plan_packs(twelve, 500, GPU_BYTES, 8, processes=2)) == [8, 4]
    # two model widths cannot share a pack: each is packed for the processes on its own
    mixed = members(4, **{"model.d_mlp": [256, 512]})
    packs = plan_packs(mixed, None, GPU_BYTES, 256, processes=2)
    assert sizes(packs) == cpu_pack_sizes(4, 2) * 2
    assert all(len({m.spec.model.d_mlp for m in pack}) == 1 for pack in packs)
