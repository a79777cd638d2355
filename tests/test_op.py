"""The custom op and the `matmul` front: torch.matmul semantics, opcheck, torch.compile, autograd, errors."""

from __future__ import annotations

import pytest
import torch

import gpperf_torch as gp
from gpperf_torch import TileConfig, kernels

from helpers import DEVICES, assert_close_to_reference, randn

SMALL = TileConfig(16, 32, 32)  # keeps the interpreter quick; selection is tested without a forced config too


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize(
    "sa, sb",
    [
        ((7,), (7,)),  # dot
        ((7,), (7, 5)),  # vector @ matrix
        ((6, 7), (7,)),  # matrix @ vector
        ((6, 7), (7, 5)),
        ((3, 6, 7), (7, 5)),  # batched @ 2-D: folded into M
        ((2, 3, 6, 7), (7, 5)),  # 4-D @ 2-D
        ((6, 7), (3, 7, 5)),  # 2-D @ batched
        ((2, 1, 6, 7), (3, 7, 5)),  # broadcast batch
        ((3, 6, 7), (3, 7, 5)),
    ],
    ids=str,
)
def test_matches_torch_matmul_semantics(device, dtype, sa, sb):
    a, b = randn(*sa, dtype=dtype, device=device), randn(*sb, dtype=dtype, device=device)
    out = gp.matmul(a, b, config=SMALL)
    ref = torch.matmul(a.double(), b.double())
    assert out.shape == ref.shape and out.dtype == dtype
    rtol, atol = {torch.float16: (2e-3, 1e-2), torch.bfloat16: (1.6e-2, 3e-2), torch.float32: (1e-5, 1e-5)}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_selected_config_without_forcing(device, dtype):
    a = randn(100, 53, dtype=dtype, device=device)
    b = randn(37, 53, dtype=dtype, device=device).t()  # weight-like transposed view
    assert_close_to_reference(gp.matmul(a, b), a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    a = randn(40, 24, dtype=torch.float32, device=device, gen=None).requires_grad_()
    b = randn(24, 18, dtype=torch.float32, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.gpperf.mm.default, (a, b, None, SMALL.key, None))
    a3 = randn(2, 20, 24, dtype=torch.float16, device=device)
    b3 = randn(2, 24, 18, dtype=torch.float16, device=device)
    torch.library.opcheck(torch.ops.gpperf.mm.default, (a3, b3, None, SMALL.key, "time"))
    bias = randn(18, dtype=torch.float32, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.gpperf.mm.default, (a, b, bias, SMALL.key, None))


def test_gradcheck_float64_cpu_path():
    a = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: gp.matmul(x, y), (a, b))
    v = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: gp.matmul(x, y), (a, v))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_through_the_kernel(device):
    a = randn(33, 40, dtype=torch.float32, device=device).requires_grad_()
    w = randn(24, 40, dtype=torch.float32, device=device).requires_grad_()
    gp.matmul(a, w.t(), config=SMALL).square().sum().backward()
    a2, w2 = a.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    (a2 @ w2.t()).square().sum().backward()
    torch.testing.assert_close(a.grad.double(), a2.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w.grad.double(), w2.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    a = randn(2, 16, 24, dtype=torch.float32, device=device)
    b = randn(24, 20, dtype=torch.float32, device=device)

    def f(x, y):
        return torch.relu(gp.matmul(x, y, config=SMALL)) + 1

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(a, b), f(a, b))
    # a new shape goes through the same compiled graph and picks its own config
    a2 = randn(2, 9, 24, dtype=torch.float32, device=device)
    torch.testing.assert_close(compiled(a2, b), f(a2, b))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_inductor_with_backward(device):
    torch._dynamo.reset()
    lin = gp.Linear(24, 16).to(device)
    x = randn(8, 24, dtype=torch.float32, device=device).requires_grad_()
    compiled = torch.compile(lin, backend="inductor", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert lin.weight.grad is not None and x.grad is not None


def test_float64_and_cpu_without_interpreter_use_torch():
    a, b = torch.randn(5, 6, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    torch.testing.assert_close(gp.matmul(a, b), a @ b)


@pytest.mark.parametrize(
    "a, b, err, match",
    [
        (torch.randn(3, 4), torch.randn(5, 6), ValueError, r"\(3, 4\).*\(5, 6\)"),
        (torch.randn(2, 3, 4), torch.randn(3, 5, 6), ValueError, "inner dimensions"),
        (torch.randn(2, 3, 4), torch.randn(3, 4, 6), ValueError, "batch dimensions do not broadcast"),
        (torch.randn(3, 4), torch.randn(4, 5, dtype=torch.float16), TypeError, "float32 and torch.float16"),
        (torch.ones(3, 4, dtype=torch.int64), torch.ones(4, 5, dtype=torch.int64), TypeError, "int64"),
        (torch.ones(3, 4, dtype=torch.complex64), torch.ones(4, 5, dtype=torch.complex64), TypeError, "complex"),
        (torch.tensor(2.0), torch.randn(3), ValueError, "at least 1D"),
    ],
)
def test_bad_input_errors_name_the_problem(a, b, err, match):
    with pytest.raises(err, match=match):
        gp.matmul(a, b)
    with pytest.raises(RuntimeError):  # the kind torch.matmul raises, too
        gp.matmul(a, b)


@pytest.mark.cuda
def test_device_mismatch_error():
    with pytest.raises(ValueError, match="cuda.*cpu|cpu.*cuda"):
        gp.matmul(torch.randn(3, 4, device="cuda"), torch.randn(4, 5))


def test_forced_config_must_be_valid():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with pytest.raises(ValueError, match="shared memory"):
        gp.matmul(a, b, config=TileConfig(256, 256, 128, num_warps=8, num_stages=5))
    with pytest.raises(ValueError, match="not a TileConfig key"):
        gp.matmul(a, b, config="big")
    with pytest.raises(ValueError, match="unknown objective"):
        gp.matmul(a, b, objective="fastest")


@pytest.mark.cuda
def test_cuda_graph_capture_with_cached_and_new_shapes():
    """Inside a capture a cached shape launches its compiled kernel; a shape seen first there gets torch.matmul
    (no selection during a capture); both replay correctly."""
    from gpperf_torch.selection import selector

    a = randn(256, 512, dtype=torch.float16, device="cuda")
    b = randn(512, 384, dtype=torch.float16, device="cuda")
    a_new = randn(48, 512, dtype=torch.float16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs advise: kernels compiled
        gp.matmul(a, b)
        gp.matmul(a_new, b)
    torch.cuda.current_stream().wait_stream(side)
    selector.reset()
    gp.matmul(a, b)  # cached again before the capture; a_new is first seen inside it
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gp.matmul(a, b)
        out_new = gp.matmul(a_new, b)
    a.copy_(randn(256, 512, dtype=torch.float16, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert_close_to_reference(out, a, b)
    assert_close_to_reference(out_new, a_new, b)


def _raise_out_of_resources(*args, **kwargs):
    from triton.runtime.errors import OutOfResources

    raise OutOfResources(300000, 232448, "shared memory")


@pytest.mark.skipif(not kernels.interpreting(), reason="the CPU kernel runs Triton only under the interpreter")
def test_triton_failure_is_loud_on_cpu_and_names_a_forced_config(monkeypatch):
    from gpperf_torch.selection import selector

    a, b = torch.randn(8, 16), torch.randn(16, 8)
    selector.replace_choice(a, b, None, SMALL)  # a Triton config is the choice, whatever the model says
    monkeypatch.setattr(kernels, "launch", _raise_out_of_resources)
    with pytest.raises(RuntimeError, match="forced config 16x32x32.*does not compile or launch"):
        gp.matmul(a, b, config=SMALL)
    with pytest.raises(Exception, match="shared memory"):  # interpreter: never papered over with torch.matmul
        gp.matmul(a, b)


@pytest.mark.cuda
def test_selected_config_failing_on_the_gpu_falls_back_to_torch(monkeypatch, caplog):
    from gpperf_torch.selection import selector

    a = randn(40, 72, dtype=torch.float16, device="cuda")
    b = randn(72, 56, dtype=torch.float16, device="cuda")
    selector.replace_choice(a, b, None, TileConfig(32, 32, 32))  # make sure a Triton config is chosen
    monkeypatch.setattr(kernels, "launch", _raise_out_of_resources)
    with caplog.at_level("WARNING"):
        out = gp.matmul(a, b)
    assert_close_to_reference(out, a, b)
    assert "failed" in caplog.text and selector.choose(a, b, None, None) is None  # remembered: torch.matmul


def test_linear_gradcheck_float64_cpu_path():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gp.ops.linear, (x, w, bias))
    torch.testing.assert_close(gp.ops.linear(x, w, bias), torch.nn.functional.linear(x, w, bias))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_linear_fused_bias_forward_and_backward(device, dtype):
    x = randn(3, 7, 40, dtype=dtype, device=device).requires_grad_()
    w = randn(24, 40, dtype=dtype, device=device).requires_grad_()
    bias = randn(24, dtype=dtype, device=device).requires_grad_()
    out = gp.ops.linear(x, w, bias)
    x2, w2, b2 = (t.detach().double().requires_grad_() for t in (x, w, bias))
    ref = torch.nn.functional.linear(x2, w2, b2)
    rtol, atol = {torch.float16: (2e-3, 1e-2), torch.bfloat16: (1.6e-2, 6e-2), torch.float32: (1e-5, 1e-5)}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    out.double().square().sum().backward()
    ref.square().sum().backward()
    for got, want in ((x.grad, x2.grad), (w.grad, w2.grad), (bias.grad, b2.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=max(rtol, 2e-2), atol=max(atol, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("config", [SMALL, TileConfig(16, 32, 16, split_k=2)], ids=lambda c: c.key)
def test_output_rounds_to_nearest_even_like_torch(device, dtype, config):
    """The fp32 -> fp16/bf16 output cast rounds to nearest, ties to even, as torch and the GPU do (the Triton
    interpreter alone truncates to bf16: launch rounds its fp32 result with torch there). Each output is
    1 + c, exact in fp32, with c a quarter, half, three quarters and one and a half units in the last place."""
    ulp = torch.finfo(dtype).eps  # the spacing of dtype at 1.0
    c = torch.tensor([0.25, 0.5, 0.75, 1.5], dtype=torch.float64) * ulp
    k = 32
    a = torch.zeros(4, k, dtype=dtype, device=device)
    a[:, :2] = 1
    b = torch.zeros(k, 4, dtype=dtype, device=device)
    b[0] = 1
    b[1] = c.to(dtype)
    assert torch.equal(b[1].double().cpu(), c), "the addends must be exact in dtype"
    out = gp.matmul(a, b, config=config)
    want = (a.float() @ b.float()).to(dtype)  # one fp32 sum, rounded by torch
    assert torch.equal(out.cpu(), want.cpu()), (out[0].tolist(), want[0].tolist())
    if dtype != torch.float32:
        # nearest-even: 1/4 and the 1/2 tie go down to 1, 3/4 up to 1 + ulp, the 3/2 tie up to 1 + 2 ulp
        assert out[0].double().cpu().tolist() == [1.0, 1.0, 1.0 + ulp, 1.0 + 2 * ulp]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("offset", [1, 2, 4], ids=lambda o: f"off{o}")
@pytest.mark.parametrize("layout", ["a_sliced", "b_transposed_sliced", "both"])
def test_views_with_weakly_aligned_pointers(device, dtype, offset, layout):
    """Views starting `offset` elements into their storage (pointers 2-, 4- or 8-byte aligned in fp16/bf16, 4-
    or 8-byte and 16 in fp32), with K % 16 == 8 and an odd N, read in place: the op's result matches float64."""
    m, n, k = 37, 41, 72
    big_a = randn(m, k + 16, dtype=dtype, device=device)
    big_b = randn(n + 3, k + 16, dtype=dtype, device=device)
    a = big_a[:, offset : offset + k] if layout != "b_transposed_sliced" else randn(m, k, dtype=dtype, device=device)
    b = big_b[1 : n + 1, offset : offset + k].t() if layout != "a_sliced" else randn(k, n, dtype=dtype, device=device)
    if layout != "b_transposed_sliced":
        assert a.data_ptr() % 16 != 0 or offset * a.element_size() % 16 == 0
    assert_close_to_reference(gp.matmul(a, b, config=SMALL), a, b)
