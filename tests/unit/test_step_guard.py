"""StepGuard (training/guards.py) on a plain torch optimizer: the refused step leaves weights and optimizer state
untouched; non-finite gradients, a non-finite loss or norm, and (when enabled) a loss spike are refused."""

import math

import pytest
import torch

from megatron_code.training.guards import StepGuard


def _setup(spike=0.0):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, StepGuard(opt, spike_factor=spike)


def _step(model, opt, guard, loss_scale=1.0, grad_poison=None, norm=None):
    guard.begin_step()
    loss = model(torch.ones(3, 4)).pow(2).mean() * loss_scale
    guard.record_loss(loss)
    loss.backward()
    if grad_poison is not None:
        model.weight.grad[0, 0] = grad_poison
    guard.known_norm = norm
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()} for k, v in opt.state.items()}
    opt.step()
    opt.zero_grad()
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    same_state = all(torch.equal(state[k][n], opt.state[k][n]) for k in state for n in state[k])
    return guard.verdict("fp32"), changed, same_state


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_is_refused_and_nothing_changes(poison):
    model, opt, guard = _setup()
    v, changed, _ = _step(model, opt, guard)
    assert not v.skipped and changed
    v, changed, same_state = _step(model, opt, guard, grad_poison=poison)
    assert v.skipped and "gradient holds NaN/inf" in v.why and not changed and same_state
    v, changed, _ = _step(model, opt, guard)
    assert not v.skipped and changed


def test_non_finite_loss_and_norm_are_refused():
    model, opt, guard = _setup()
    v, changed, _ = _step(model, opt, guard, loss_scale=float("nan"))
    assert v.skipped and "loss not finite" in v.why and not changed
    v, changed, _ = _step(model, opt, guard, norm=float("inf"))
    assert v.skipped and "grad norm" in v.why and not changed
    v, changed, _ = _step(model, opt, guard, norm=-1.0)  # DeepSpeed's sentinel for a non-finite norm
    assert v.skipped and not changed


def test_loss_spike_is_refused_only_when_enabled_and_after_some_history():
    model, opt, guard = _setup(spike=10.0)
    v, _, _ = _step(model, opt, guard, loss_scale=1e6)  # no history yet: cannot be judged a spike
    assert not v.skipped
    model, opt, guard = _setup(spike=10.0)
    for _ in range(StepGuard.SPIKE_MIN_HISTORY):
        assert not _step(model, opt, guard)[0].skipped
    v, changed, _ = _step(model, opt, guard, loss_scale=1e3)
    assert v.skipped and v.why.startswith("loss spike:") and not changed
    assert not _step(model, opt, guard, loss_scale=2.0)[0].skipped
    model, opt, guard = _setup(spike=0.0)
    for _ in range(StepGuard.SPIKE_MIN_HISTORY):
        _step(model, opt, guard)
    assert not _step(model, opt, guard, loss_scale=1e3)[0].skipped


def test_decided_once_per_step_and_not_stepped_reported():
    model, opt, guard = _setup()
    guard.begin_step()
    assert guard.verdict("fp32").skipped  # the optimizer never stepped: reported, not silently "fine"
    v, _, _ = _step(model, opt, guard)
    assert math.isfinite(v.loss) and not v.skipped
