"""Drop-in Linear, patch/unpatch round trip, shape recording."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gpperf_torch as gp
from gpperf_torch import kernels

pytestmark = pytest.mark.skipif(
    not kernels.interpreting() and not torch.cuda.is_available(), reason="needs the Triton interpreter or a GPU"
)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 8, bias=False))


def test_linear_is_drop_in():
    ref = nn.Linear(24, 16)
    lin = gp.Linear(24, 16)
    lin.load_state_dict(ref.state_dict())
    assert list(lin.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="cast"):
        lin(x.half())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_patched_linear_raises_what_nn_linear_raises(dtype):
    """torch's nn.Linear raises RuntimeError for a dtype mismatch: code catching that keeps working patched."""
    model = _mlp()
    x = torch.randn(4, 24).to(dtype)
    with pytest.raises(RuntimeError):
        model(x)
    gp.patch(model)
    with pytest.raises(RuntimeError, match="cast") as got:
        model(x)
    assert isinstance(got.value, gp.DtypeError)


def test_every_error_class_of_ours_is_a_runtime_error():
    from gpperf_torch import errors

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert len(classes) >= 6
    assert all(issubclass(c, RuntimeError) for c in classes), [c for c in classes if not issubclass(c, RuntimeError)]


def test_patch_unpatch_round_trip_shares_weights():
    model = _mlp()
    x = torch.randn(4, 24)
    before = model(x)
    keys = list(model.state_dict())
    w = model[0].weight
    assert gp.patch(model) is model
    assert type(model[0]) is gp.Linear and type(model[2]) is gp.Linear
    assert model[0].weight is w and list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    gp.unpatch(model)
    assert type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), before)


def test_patched_model_trains_like_torch():
    ref, model = _mlp(), gp.patch(_mlp())
    x = torch.randn(6, 24)
    ref(x).square().sum().backward()
    model(x).square().sum().backward()
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4)


def test_record_shapes_forward_and_backward_without_changing_the_model():
    model = _mlp()
    x = torch.randn(5, 24)
    shapes = dict(gp.record_shapes(model, (x,)))
    assert type(model[0]) is nn.Linear, "recording must leave the model unpatched"
    assert all(p.grad is None for p in model.parameters()), "recording must not leave gradients"
    assert gp.nn.GemmShape(5, 32, 24, "float32", False, True) in shapes  # forward: x @ W^T, W a transposed view
    mnk = {(s.m, s.n, s.k) for s in shapes}
    # forward 5x32x24 and 5x8x32; backward dH = dY @ W2 (5x32x8), dW2^T = H^T @ dY (32x8x5), dW1^T (24x32x5)
    assert mnk == {(5, 32, 24), (5, 8, 32), (5, 32, 8), (32, 8, 5), (24, 32, 5)}


def test_autocast_like_torch():
    lin = gp.Linear(24, 16)
    ref = nn.Linear(24, 16)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(3, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expect = lin(x), ref(x)
        mm = gp.matmul(x, torch.randn(24, 5))
        mixed = gp.matmul(x.half(), torch.randn(24, 5))  # autocast casts both: no mixed-dtype error
    assert out.dtype == expect.dtype == mm.dtype == mixed.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expect.float(), rtol=2e-2, atol=2e-2)
    with pytest.raises(TypeError, match="autocast"):
        lin(x.half())  # outside autocast the dtypes must match


@pytest.mark.parametrize(
    "kw, err",
    [(dict(config="bogus"), gp.ConfigError), (dict(objective="fastest"), RuntimeError), (dict(config=123), TypeError)],
)
def test_bad_options_raise_our_errors_not_attribute_errors(kw, err):
    with pytest.raises(err):
        gp.matmul(torch.randn(4, 4), torch.randn(4, 4), **kw)
