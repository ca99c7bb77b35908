"""The engine on a GPU: the same training as on the CPU (within float tolerance), checkpoints that
resume there and move to the CPU, the precision flags, and a training step that never waits for
the GPU. Skipped where there is no CUDA device (bench/gpu_check.sh runs them on one)."""
from __future__ import annotations

import math

import pytest
import torch

from service.contract.spec import deep_merge
from worker.engine.optim import EnsembleOptimizer
from worker.engine.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = {"training": {"device": "cuda"}}
MEMBERS = [  # a pack whose members differ in seed, lr and weight decay
    {"training": {"seed": 0}, "optimizer": {"lr": 1e-3, "weight_decay": 1.0}},
    {"training": {"seed": 1}, "optimizer": {"lr": 3e-3, "weight_decay": 0.0}},
    {"training": {"seed": 2}, "optimizer": {"lr": 1e-3, "weight_decay": 0.3}},
]


@pytest.fixture(autouse=True)
def restore_precision_flags():
    """The trainer sets torch's global TF32 flag; every test starts and ends with it off."""
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.cuda.set_sync_debug_mode(0)


def pack_specs(tiny_spec, **common):
    return [tiny_spec(**deep_merge(common, member)) for member in MEMBERS]


def losses_over(trainer: Trainer, steps: int) -> torch.Tensor:
    """The members' training losses [steps, E] of the next `steps` steps, on the CPU."""
    return torch.stack([trainer.train_step() for _ in range(steps)]).double().cpu()


def params_of(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().double().cpu() for p in trainer.model.parameters()]


def assert_params_close(mine: list[torch.Tensor], theirs: list[torch.Tensor], rel: float) -> None:
    for p, q in zip(mine, theirs):
        err = ((p - q).norm() / q.norm().clamp(min=1e-12)).item()
        assert err < rel, f"parameter {list(q.shape)} differs by {err:.2e} (relative), allowed {rel}"


def test_a_pack_on_cuda_trains_like_on_the_cpu(tiny_spec):
    """fp32 on both (TF32 off): 30 steps of a 3-member pack give the same losses and weights."""
    cpu = Trainer.for_members(pack_specs(tiny_spec))
    gpu = Trainer.for_members(pack_specs(tiny_spec, **CUDA))
    assert gpu.model.W_E.is_cuda and gpu.optimizer.fused is not None
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_losses, gpu_losses = losses_over(cpu, 30), losses_over(gpu, 30)
    torch.testing.assert_close(gpu_losses, cpu_losses, rtol=1e-3, atol=1e-5)
    assert_params_close(params_of(gpu), params_of(cpu), rel=1e-3)
    assert gpu_losses[-1].max() < gpu_losses[0].min()


def test_tf32_and_bf16_autocast_train_close_to_fp32(tiny_spec):
    """training.tf32 turns torch's TF32 matmuls on; autocast_bf16 runs the forward in bf16.
    Both stay near the fp32 run over 30 steps and still reduce the loss."""
    fp32 = losses_over(Trainer(tiny_spec(**CUDA)), 30)
    tf32_trainer = Trainer(tiny_spec(training={"device": "cuda", "tf32": True}))
    assert torch.backends.cuda.matmul.allow_tf32
    tf32 = losses_over(tf32_trainer, 30)
    torch.backends.cuda.matmul.allow_tf32 = False
    bf16 = losses_over(Trainer(tiny_spec(training={"device": "cuda", "autocast_bf16": True})), 30)
    torch.testing.assert_close(tf32, fp32, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(bf16, fp32, rtol=5e-2, atol=1e-2)
    for losses in (tf32, bf16):
        assert torch.isfinite(losses).all() and losses[-1, 0] < losses[0, 0]


def test_a_cuda_checkpoint_resumes_on_cuda_and_on_the_cpu(tiny_spec):
    """Checkpoint at step 10 of a 2-member run; resumed on CUDA it ends where the uninterrupted
    run ends (the GPU's index_add is not bit-reproducible, hence a tolerance); loaded on the CPU
    it continues close to it."""
    spec = tiny_spec(ensemble={"size": 2}, training={"device": "cuda", "steps": 20, "checkpoint_every": 10})
    blobs: dict[int, bytes] = {}
    full = Trainer(spec)
    full.run(on_checkpoint=lambda step, blob, meta: blobs.setdefault(step, blob))
    assert sorted(blobs) == [10, 20]
    resumed = Trainer.from_checkpoint(spec, blobs[10])
    assert resumed.step == 10 and resumed.model.W_E.is_cuda
    resumed.run()
    assert_params_close(params_of(resumed), params_of(full), rel=1e-5)
    on_cpu = Trainer.from_checkpoint(spec, blobs[10], device="cpu")
    assert not on_cpu.model.W_E.is_cuda
    on_cpu.run()
    assert_params_close(params_of(on_cpu), params_of(full), rel=1e-3)


def test_a_member_of_a_cuda_pack_continues_alone_from_its_checkpoint(tiny_spec):
    specs = pack_specs(tiny_spec, **CUDA)
    pack = Trainer.for_members(specs)
    losses_over(pack, 10)
    blob = pack.member_checkpoints()[1]
    alone = Trainer.from_checkpoint(specs[1], blob)
    assert alone.step == 10
    torch.backends.cuda.matmul.allow_tf32 = False  # a batched and a single TF32 matmul round apart
    pack_losses, alone_losses = losses_over(pack, 10), losses_over(alone, 10)
    torch.testing.assert_close(alone_losses[:, 0], pack_losses[:, 1], rtol=1e-4, atol=1e-6)
    assert_params_close([p[1:2] for p in params_of(pack)], params_of(alone), rel=1e-4)


SYNC_FREE = {
    "transformer pack, full batch": {},
    "minibatch": {"training": {"batch_size": 16}},
    "mlp, stablemax, perpendicular grad": {
        "model": {"arch": "mlp", "n_layers": 2, "d_mlp": 64},
        "optimizer": {"loss": "stablemax", "loss_float64": True, "orthogonal_grad": True},
    },
    "grokfast filter": {"optimizer": {"grad_filter": {"kind": "ema", "alpha": 0.98, "lamb": 2.0}}},
    "bf16 autocast": {"training": {"autocast_bf16": True}},
}


@pytest.mark.parametrize("overrides", list(SYNC_FREE.values()), ids=list(SYNC_FREE))
def test_a_training_step_never_waits_for_the_gpu(tiny_spec, overrides):
    """torch's sync debug mode raises on anything that makes the host wait for the device
    (.item(), .cpu(), a blocking copy, data-dependent shapes): a step must queue its work and
    return, or the GPU idles while Python catches up."""
    trainer = Trainer.for_members(pack_specs(tiny_spec, **deep_merge(CUDA, overrides)))
    losses_over(trainer, 2)  # allocations and library handles of the first steps
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(math.isfinite(x) for x in trainer.train_step().tolist())


def test_fused_optimizer_on_cuda_matches_the_plain_step():
    g = torch.Generator().manual_seed(0)
    shapes = ((3, 16, 8), (3, 8))
    init = [torch.randn(shape, generator=g) for shape in shapes]
    grads = [[torch.randn(shape, generator=g) for shape in shapes] for _ in range(6)]
    results = []
    for fused in (False, True):
        params = [torch.nn.Parameter(x.cuda()) for x in init]
        opt = EnsembleOptimizer(params, "adamw", lr=[1e-2, 1e-3, 1e-2], weight_decay=[1.0, 0.0, 0.1],
                                warmup_steps=3, fused=fused)
        for grad in grads:
            opt.zero_grad()
            for p, x in zip(params, grad):
                p.grad.copy_(x.cuda())
            opt.step()
        results.append([p.detach().cpu() for p in params])
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
