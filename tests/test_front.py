"""The front's contract beyond the common case: empty GEMMs never selected, meta tensors, F.linear's bias rules,
and which calls go through the custom-op dispatcher (autograd, torch.compile) and which skip it (inference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpperf_torch as gp
from gpperf_torch import ops
from gpperf_torch.predictor.runtime import shipped_model
from gpperf_torch.selection import selector

from helpers import DEVICES, randn


@pytest.fixture
def shipped(fresh_selector, monkeypatch):
    """The shipped H100 model loaded for the device under test (the interpreter describes the CPU as an H100),
    and selection made to fail loudly: an empty GEMM must never reach it."""
    gp.set_model(str(shipped_model("h100")), "cpu")
    if torch.cuda.is_available():
        gp.set_model(str(shipped_model("h100")), "cuda")
    assert selector._state(torch.device("cpu")).model is not None

    def no_selection(*args, **kwargs):
        raise AssertionError("an empty GEMM reached selection")

    monkeypatch.setattr(selector, "rank", no_selection)
    monkeypatch.setattr(selector, "choose", no_selection)


# ---- empty GEMMs: M, N, K or a batch of 0 ---------------------------------------------------------------------
MATMUL_EMPTY = [
    ((0, 4), (4, 5)),  # M = 0
    ((3, 4), (4, 0)),  # N = 0
    ((3, 0), (0, 5)),  # K = 0: zeros
    ((2, 3, 0), (0, 5)),  # K = 0 above 2-D
    ((2, 3, 0), (2, 0, 5)),  # batched, K = 0
    ((0, 3, 4), (0, 4, 5)),  # a batch of 0
    ((0, 3, 4), (4, 5)),  # a batch of 0 folded into M
    ((3, 4), (0, 4, 5)),  # 2-D @ an empty batch
    ((2, 1, 3, 0), (4, 0, 5)),  # broadcast batch, K = 0
    ((2, 0, 3, 4), (1, 4, 5)),  # broadcast to a batch of 0
    ((0,), (0,)),  # an empty dot: 0
    ((0,), (0, 5)),  # vector @ matrix, K = 0
    ((3, 0), (0,)),  # matrix @ vector, K = 0
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sa, sb", MATMUL_EMPTY, ids=str)
def test_empty_matmul_is_torchs_without_selection(shipped, device, sa, sb):
    a = randn(*sa, dtype=torch.float16, device=device).requires_grad_()
    b = randn(*sb, dtype=torch.float16, device=device).requires_grad_()
    want = torch.matmul(a, b)
    with torch.no_grad():
        got = gp.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want.detach())
    out = gp.matmul(a, b)  # autograd: through the op
    assert out.shape == want.shape
    torch.testing.assert_close(out, want)
    if out.numel():
        out.float().sum().backward()
        assert a.grad is not None and b.grad is not None and not a.grad.any() and not b.grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sa, sb", [((0, 4), (4, 5)), ((3, 0), (0, 5)), ((2, 3, 0), (0, 5)), ((0, 3, 4), (0, 4, 5))])
def test_empty_matmul_under_torch_compile(shipped, device, sa, sb):
    torch._dynamo.reset()
    a, b = randn(*sa, dtype=torch.float32, device=device), randn(*sb, dtype=torch.float32, device=device)
    f = torch.compile(lambda x, y: gp.matmul(x, y) + 1, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(a, b), torch.matmul(a, b) + 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "sx, sw, with_bias",
    [
        ((0, 4), (5, 4), True),  # no rows
        ((3, 0), (5, 0), True),  # 0 input features: the bias
        ((3, 0), (5, 0), False),  # 0 input features: zeros
        ((2, 3, 0), (5, 0), True),  # 0 input features above 2-D
        ((3, 4), (0, 4), True),  # 0 output features
        ((0, 3, 4), (5, 4), True),  # a batch of 0
        ((0,), (5, 0), True),  # a 1-D input of 0 features
    ],
    ids=str,
)
def test_empty_linear_is_F_linear_without_selection(shipped, device, sx, sw, with_bias):
    x = randn(*sx, dtype=torch.float32, device=device).requires_grad_()
    w = randn(*sw, dtype=torch.float32, device=device).requires_grad_()
    bias = randn(sw[0], dtype=torch.float32, device=device).requires_grad_() if with_bias else None
    want = F.linear(x, w, bias)
    got = gp.linear(x, w, bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    if got.numel():
        got.sum().backward()
        if bias is not None:
            torch.testing.assert_close(bias.grad, torch.full_like(bias, float(x.shape[:-1].numel())))
    torch._dynamo.reset()
    compiled = torch.compile(gp.linear, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, bias), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_f, out_f", [(0, 5), (4, 0)])
def test_patched_linear_with_no_features(shipped, device, in_f, out_f):
    ref = nn.Linear(in_f, out_f).to(device)
    model = gp.patch(nn.Sequential(nn.Linear(in_f, out_f))).to(device)
    model[0].load_state_dict(ref.state_dict())
    x = randn(2, 3, in_f, dtype=torch.float32, device=device)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x))
    out = model(x)
    torch.testing.assert_close(out, ref(x))
    out.sum().backward()
    assert model[0].bias.grad is not None


# ---- meta tensors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sa, sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 5)), ((4,), (4, 5)), ((4,), (4,))]
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("grad", [False, True])
def test_meta_matmul_is_a_meta_result(sa, sb, dtype, grad):
    a = torch.empty(sa, dtype=dtype, device="meta", requires_grad=grad)
    b = torch.empty(sb, dtype=dtype, device="meta", requires_grad=grad)
    got, want = gp.matmul(a, b), torch.matmul(a, b)
    assert got.device.type == "meta" and got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.parametrize("grad", [False, True])
def test_meta_linear_and_patched_layer(grad):
    x = torch.empty(2, 3, 8, dtype=torch.float16, device="meta", requires_grad=grad)
    w = torch.empty(5, 8, dtype=torch.float16, device="meta", requires_grad=grad)
    bias = torch.empty(5, dtype=torch.float16, device="meta", requires_grad=grad)
    got = gp.linear(x, w, bias)
    assert got.device.type == "meta" and got.shape == (2, 3, 5)
    layer = gp.Linear(8, 5, device="meta", dtype=torch.float16)
    assert layer(x).shape == (2, 3, 5)


# ---- F.linear's bias rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "x_dtype, b_dtype",
    [
        (torch.float16, torch.float32),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
        (torch.float32, torch.float64),
    ],
    ids=str,
)
def test_bias_dtype_must_match_like_F_linear(device, x_dtype, b_dtype):
    x = randn(3, 8, dtype=x_dtype, device=device)
    w = randn(5, 8, dtype=x_dtype, device=device)
    bias = randn(5, dtype=b_dtype, device=device)
    with pytest.raises(RuntimeError):
        F.linear(x, w, bias)
    with pytest.raises(TypeError, match=str(b_dtype)):  # (also a RuntimeError, like F.linear's)
        gp.linear(x, w, bias)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "sx, sb",
    [
        ((3, 8), (5,)),
        ((3, 8), (1, 5)),
        ((3, 8), (1,)),
        ((3, 8), ()),
        ((3, 8), (1, 1)),
        ((3, 8), (3, 5)),  # per element (addmm's rule)
        ((3, 8), (3, 1)),  # per row
        ((2, 3, 8), (1, 5)),
        ((2, 3, 8), (3, 5)),
        ((2, 3, 8), (2, 3, 5)),
        ((2, 3, 8), (2, 1, 5)),
        ((8,), (1, 5)),
        ((8,), ()),
    ],
    ids=str,
)
def test_broadcastable_bias_like_F_linear(device, sx, sb):
    x = randn(*sx, dtype=torch.float32, device=device)
    w = randn(5, 8, dtype=torch.float32, device=device)
    bias = torch.randn(sb).to(device)
    want = F.linear(x.double(), w.double(), bias.double())
    got = gp.linear(x, w, bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sx, sb", [((3, 8), (1, 1, 5)), ((3, 8), (2, 3, 5)), ((8,), (3, 5)), ((3, 8), (4,))], ids=str)
def test_bias_F_linear_rejects_is_rejected(sx, sb):
    x, w, bias = torch.randn(sx), torch.randn(5, 8), torch.randn(sb)
    with pytest.raises(RuntimeError):
        F.linear(x, w, bias)
    with pytest.raises(RuntimeError):
        gp.linear(x, w, bias)


# ---- the dispatcher: skipped in inference, used under autograd and torch.compile --------------------------------
def _biased_model(device: str) -> nn.Module:
    torch.manual_seed(0)
    return gp.patch(nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8))).to(device)


@pytest.fixture
def op_calls(monkeypatch):
    calls = []
    real = ops.mm

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(ops, "mm", counting)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_biased_layers_skip_the_dispatcher_in_inference(op_calls, device, context):
    model = _biased_model(device)
    assert isinstance(model[0].bias, nn.Parameter) and model[0].bias.requires_grad
    x = torch.randn(4, 16, device=device)
    with context():
        out = model(x)
    assert not op_calls, "inference must not enter the custom-op dispatcher"
    torch.testing.assert_close(out, gp.unpatch(model)(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_biased_layers_use_the_op_under_autograd(op_calls, device):
    model = _biased_model(device)
    model(torch.randn(4, 16, device=device)).sum().backward()
    assert len(op_calls) == 2  # one forward call per layer (backward GEMMs run inside the op's backward)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad", [False, True])
def test_torch_compile_graph_holds_the_op(device, grad):
    torch._dynamo.reset()
    model = _biased_model(device)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(4, 16, device=device)
    with torch.set_grad_enabled(grad):
        compiled(x)
    targets = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.gpperf.mm.default) == 2, targets


@pytest.mark.parametrize(
    "a, b, bias, err, match",
    [
        (torch.randn(3, 4), torch.randn(5, 6), None, ValueError, "do not multiply"),
        (torch.randn(3, 4), torch.randn(4, 6, dtype=torch.float16), None, TypeError, "dtypes differ"),
        (torch.randn(3, 4), torch.randn(4, 6), torch.randn(5), ValueError, "bias must be 1-D of 6"),
        (torch.randn(3, 4), torch.randn(4, 6), torch.randn(6, dtype=torch.float16), TypeError, "bias torch.float16"),
        (torch.randn(2, 3, 4), torch.randn(3, 4, 6), None, ValueError, "do not multiply"),
        (torch.randn(3, 4), torch.randn(1, 4, 6), None, ValueError, "equal rank"),
    ],
)
def test_direct_op_calls_check_their_operands(a, b, bias, err, match):
    """The front checks once and calls the implementation unchecked; torch.ops.gpperf.mm called directly checks."""
    with pytest.raises(err, match=match):
        torch.ops.gpperf.mm(a, b, bias, None, None)
