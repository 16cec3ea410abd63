"""Adafactor as PaLM used it (training/optimizer.py): each step equal to a plain element-by-element reference
written from Shazeer & Stern (2018) and PaLM sec. 5; the configuration refusals; and through DeepSpeed."""

import math

import pytest
import torch

from megatron_code.config.base import ConfigError
from megatron_code.config.cli import parse_args
from megatron_code.config.optim import OptimConfig
from megatron_code.training.optimizer import Adafactor, build_optimizer


def reference_step(x, g, state, lr, beta1=0.9, decay=-0.8, eps1=1e-30, eps2=1e-3, d=1.0, wd=0.0):
    """One Adafactor step on plain Python floats (lists), float64 throughout."""
    state["k"] = state.get("k", 0) + 1
    k = state["k"]
    beta2 = 1.0 - k ** decay
    v = state.setdefault("v", [0.0] * len(x))
    m = state.setdefault("m", [0.0] * len(x))
    for i, gi in enumerate(g):
        v[i] = beta2 * v[i] + (1.0 - beta2) * (gi * gi + eps1)
    u = [gi / math.sqrt(vi) for gi, vi in zip(g, v)]
    rms_u = math.sqrt(sum(ui * ui for ui in u) / len(u))
    u = [ui / max(1.0, rms_u / d) for ui in u]
    if beta1 > 0:
        for i, ui in enumerate(u):
            m[i] = beta1 * m[i] + (1.0 - beta1) * ui
        u = list(m)
    scale = lr * max(eps2, math.sqrt(sum(xi * xi for xi in x) / len(x)))
    return [xi * (1.0 - wd) - scale * ui for xi, ui in zip(x, u)]


@pytest.mark.parametrize("beta1, wd_power", [(0.9, 2.0), (0.0, None)])
def test_each_step_equals_the_plain_reference(beta1, wd_power):
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 5, generator=gen, dtype=torch.float64) * 0.05)
    opt = Adafactor([{"params": [p], "weight_decay": 0.1}], lr=1e-2, beta1=beta1,
                    weight_decay_lr_power=wd_power)
    x, state = p.detach().flatten().tolist(), {}
    for step, lr in enumerate([1e-2, 1e-2, 5e-3, 3e-3, 1e-3]):
        g = torch.randn(6, 5, generator=gen, dtype=torch.float64) * (10.0 if step == 1 else 0.1)  # step 2 clips
        p.grad = g.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        wd = lr ** wd_power if wd_power is not None else lr * 0.1
        x = reference_step(x, g.flatten().tolist(), state, lr, beta1=beta1, wd=wd)
        assert p.detach().flatten().tolist() == pytest.approx(x, rel=1e-12, abs=1e-15), step


def test_clipping_bounds_the_update_rms_and_parameter_scaling_sets_the_step():
    p = torch.nn.Parameter(torch.full((100,), 2.0, dtype=torch.float64))
    opt = Adafactor([p], lr=0.1, beta1=0.0)
    p.grad = torch.linspace(-1, 1, 100, dtype=torch.float64)
    opt.step()
    # first step: v = g^2 (+eps1), u = sign(g) with RMS 1 -> no clipping; step = lr x RMS(x) = 0.1 x 2 = 0.2
    assert (2.0 - p.detach()).abs().max().item() == pytest.approx(0.2, rel=1e-9)
    tiny = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Adafactor([tiny], lr=0.1, beta1=0.0)
    tiny.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    assert tiny.detach().tolist() == pytest.approx([-0.1 * 1e-3] * 4)  # RMS(x) = 0: eps2 = 1e-3 floors the scale


def test_no_decay_group_is_not_decayed_even_with_dynamic_weight_decay():
    w = torch.nn.Parameter(torch.ones(3, 3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = Adafactor([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.5,
                    beta1=0.0, weight_decay_lr_power=2.0)
    w.grad, b.grad = torch.zeros(3, 3), torch.zeros(3)
    opt.step()  # zero gradient: only decay moves the weights
    assert torch.allclose(w, torch.full((3, 3), 0.75)) and torch.equal(b.detach(), torch.ones(3))


def test_torch_adafactor_cannot_express_palms_variant():
    """Why ours: torch.optim.Adafactor has no first moment and always factors matrices."""
    import inspect
    params = inspect.signature(torch.optim.Adafactor).parameters
    assert "beta1" not in params and "betas" not in params and "momentum" not in params


def test_build_optimizer_from_config():
    model = torch.nn.Linear(4, 4)
    cfg = OptimConfig(optimizer="adafactor", lr=1e-2, weight_decay_lr_power=2.0)
    cfg.validate()
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Adafactor)
    assert [(g["weight_decay"], g["weight_decay_lr_power"], g["beta1"]) for g in opt.param_groups] == \
        [(0.1, 2.0, 0.9), (0.0, 2.0, 0.9)]


@pytest.mark.parametrize("argv, pattern", [
    (["--optimizer", "adafactor", "--zero-stage", "3"], r"not from ZeRO-3's partitioned parameters; use "
                                                        r"--zero-stage 1 or 2"),
    (["--optimizer", "adafactor", "--zero-stage", "2", "--cpu-optimizer"], r"CPU offload: .* drop the offload"),
    (["--optim.weight_decay_lr_power", "2"], r"implemented for --optimizer adafactor only"),
    (["--optimizer", "adafactor", "--optim.adafactor_factored", "true"], r"factored second moment is not "
                                                                         r"implemented"),
])
def test_refusals(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_args(argv)


def test_through_deepspeed_zero0_fp32_and_bf16_the_steps_are_the_optimizers():
    """DeepSpeed as the engine at ZeRO-0: fp32 hands Adafactor the parameters themselves; bf16 one fp32 master per
    parameter (FP16_UnfusedOptimizer). One step through DeepSpeed equals the same step without it."""
    from megatron_code.parallel.engine import deepspeed_config, init_distributed, initialize_engine
    init_distributed("gloo")
    for precision in ("fp32", "bf16"):
        job = parse_args(["--optimizer", "adafactor", "--lr", "1e-2", "--micro-batch-size", "2",
                          "--global-batch-size", "2"] + (["--bf16"] if precision == "bf16" else [])).job
        job.resolve_batch(1)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        plain = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        plain.load_state_dict(model.state_dict())
        engine = initialize_engine(model, build_optimizer(model, job.optim), deepspeed_config(job, 1))
        ref_opt = build_optimizer(plain, job.optim)
        x = torch.randn(2, 8)
        for _ in range(2):
            inp = x.to(torch.bfloat16) if precision == "bf16" else x
            engine.backward(engine(inp).float().pow(2).mean())
            engine.step()
            ref_opt.zero_grad()
            plain(x).pow(2).mean().backward()
            ref_opt.step()
        got = [p.detach().float() for p in engine.module.parameters()]
        want = [p.detach() for p in plain.parameters()]
        tol = 0 if precision == "fp32" else 2e-2  # bf16: its forward rounds; the masters follow the same steps
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=tol, rtol=tol), precision
