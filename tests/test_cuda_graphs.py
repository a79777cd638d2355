"""CUDA graphs: inside a capture nothing is selected or compiled; a patched model captures and replays.

On the CPU the capture logic is tested with the capture state faked (ops._capturing) and the interpreted kernel;
the real captures (torch.cuda.CUDAGraph around a decode step, torch.compile(mode="reduce-overhead")) are CUDA
tests, run by `make gpu-check` with the lean launch path off and on.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import gpperf_torch as gp
from gpperf_torch import kernels, ops
from gpperf_torch.kernels import TileConfig
from gpperf_torch.kernels import matmul as kmatmul
from gpperf_torch.selection import selector

from helpers import DEVICES, assert_close_to_reference, randn

SMALL = TileConfig(16, 32, 32)
interp_only = pytest.mark.skipif(not kernels.interpreting(), reason="CPU runs need TRITON_INTERPRET=1")


@pytest.fixture
def capturing(fresh_selector, monkeypatch):
    """Pretend the current stream is capturing a CUDA graph; count selections and kernel launches."""
    seen = {"rank": 0, "launch": []}
    real_rank, real_launch = selector.rank, kernels.launch

    def rank(*args, **kwargs):
        seen["rank"] += 1
        return real_rank(*args, **kwargs)

    def launch(*args, **kwargs):
        seen["launch"].append(kwargs.get("compiled_only", False))
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(selector, "rank", rank)
    monkeypatch.setattr(kernels, "launch", launch)
    state = {"on": False}
    monkeypatch.setattr(ops, "_capturing", lambda: state["on"])
    ops._warned.clear()
    seen["capture"] = state
    return seen


@interp_only
def test_unseen_shape_in_capture_is_torch_matmul_without_selection(capturing, caplog):
    a, b = randn(20, 24, dtype=torch.float16, device="cpu"), randn(24, 16, dtype=torch.float16, device="cpu")
    capturing["capture"]["on"] = True
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.ops"):
        out = gp.matmul(a, b)
    assert capturing["rank"] == 0 and capturing["launch"] == []
    assert "inside a CUDA graph capture" in caplog.text
    assert selector.cached_choice(a, b, None) is selector.UNSEEN  # nothing remembered from the capture
    assert_close_to_reference(out, a, b)


@interp_only
def test_seen_shape_in_capture_launches_its_compiled_kernel(capturing):
    a, b = randn(20, 24, dtype=torch.float16, device="cpu"), randn(24, 16, dtype=torch.float16, device="cpu")
    selector.choose(a, b, None, None)  # selection made before the capture (warm-up)
    selector.replace_choice(a, b, None, SMALL)  # a Triton config, whatever the model predicts
    ranks = capturing["rank"]
    capturing["capture"]["on"] = True
    out = gp.matmul(a, b)
    assert capturing["rank"] == ranks and capturing["launch"] == [True]  # launched, compiled_only
    assert_close_to_reference(out, a, b)


@interp_only
def test_seen_shape_whose_kernel_is_not_compiled_falls_back(capturing, monkeypatch, caplog):
    a, b = randn(20, 24, dtype=torch.float16, device="cpu"), randn(24, 16, dtype=torch.float16, device="cpu")
    selector.replace_choice(a, b, None, SMALL)
    launched = []
    monkeypatch.setattr(kmatmul._MATMUL, "is_compiled", lambda args, kwargs: False)
    monkeypatch.setattr(kmatmul._MATMUL, "run", lambda *args: launched.append(args))
    capturing["capture"]["on"] = True
    with caplog.at_level(logging.WARNING, logger="gpperf_torch.ops"):
        out = gp.matmul(a, b)
    assert not launched and "not compiled" in caplog.text
    assert_close_to_reference(out, a, b)
    with pytest.raises(RuntimeError, match="forced config 16x32x32.*CUDA graph capture.*warm-up"):
        gp.matmul(a, b, config=SMALL)
    assert not launched


@interp_only
def test_split_k_checks_both_kernels_before_launching_either(capturing, monkeypatch):
    a, b = randn(8, 256, dtype=torch.float32, device="cpu"), randn(256, 8, dtype=torch.float32, device="cpu")
    cfg = TileConfig(16, 16, 32, split_k=4)
    launched = []
    monkeypatch.setattr(kmatmul._MATMUL, "run", lambda *args: launched.append("mm"))
    monkeypatch.setattr(kmatmul._REDUCE, "is_compiled", lambda args, kwargs: False)
    with pytest.raises(kernels.NotCompiledError, match="not compiled"):
        kernels.launch(a, b, cfg=cfg, compiled_only=True)
    assert not launched, "the matmul kernel must not run when the reduction cannot"


@interp_only
def test_torch_choice_in_capture_stays_torch(capturing):
    a, b = randn(20, 24, dtype=torch.float32, device="cpu"), randn(24, 16, dtype=torch.float32, device="cpu")
    selector.replace_choice(a, b, None, None)
    capturing["capture"]["on"] = True
    out = gp.matmul(a, b)
    assert capturing["launch"] == []
    assert_close_to_reference(out, a, b)


# ---- on a GPU -----------------------------------------------------------------------------------------------
class _Decoder(nn.Module):
    """A small GPT-2-shaped block stack: biased Linears (qkv, proj, MLP) and attention matmuls."""

    def __init__(self, width: int = 128, layers: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    qkv=nn.Linear(width, 3 * width),
                    proj=nn.Linear(width, width),
                    up=nn.Linear(width, 4 * width),
                    down=nn.Linear(4 * width, width),
                )
            )
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            q, k, v = blk["qkv"](x).chunk(3, dim=-1)
            att = torch.softmax(gp.matmul(q, mem.transpose(-1, -2)) / 8, dim=-1)
            x = x + blk["proj"](gp.matmul(att, mem))
            x = x + blk["down"](torch.relu(blk["up"](x)))
        return x


@pytest.mark.cuda
def test_cuda_graph_around_a_decode_step():
    torch.manual_seed(0)
    model = gp.patch(_Decoder()).cuda().half().eval()
    ref = gp.unpatch(_Decoder()).cuda().half().eval()
    ref.load_state_dict(model.state_dict())
    static_x = torch.randn(4, 1, 128, device="cuda", dtype=torch.float16)
    mem = torch.randn(4, 16, 128, device="cuda", dtype=torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up: selection and compilation happen here
            model(static_x, mem)
    torch.cuda.current_stream().wait_stream(side)
    calls = {"rank": 0}
    real_rank = selector.rank

    def rank(*args, **kwargs):
        calls["rank"] += 1
        return real_rank(*args, **kwargs)

    selector.rank = rank
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = model(static_x, mem)
    finally:
        selector.rank = real_rank
    assert calls["rank"] == 0, "selection ran inside the capture"
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        torch.cuda.synchronize()
        with torch.inference_mode():
            want = ref(static_x, mem)
        torch.testing.assert_close(static_out, want, rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
def test_uncached_shape_first_met_in_a_capture_replays_correctly():
    a = randn(48, 512, dtype=torch.float16, device="cuda")
    b = randn(512, 384, dtype=torch.float16, device="cuda")
    selector.reset()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuBLAS warmed up (handle, workspace), as torch's docs advise; gpperf not
        torch.matmul(a, b)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gp.matmul(a, b)
    assert selector.cached_choice(a, b, None) is selector.UNSEEN
    a.copy_(randn(48, 512, dtype=torch.float16, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert_close_to_reference(out, a, b)


@pytest.mark.cuda
def test_torch_compile_reduce_overhead_captures_and_replays():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = gp.patch(_Decoder()).cuda().half().eval()
    ref = gp.unpatch(_Decoder()).cuda().half().eval()
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    mem = torch.randn(4, 16, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        for _ in range(4):  # warm-up runs, then the recorded graph replays
            x = torch.randn(4, 1, 128, device="cuda", dtype=torch.float16)
            out = compiled(x, mem).clone()
            torch.testing.assert_close(out, ref(x, mem), rtol=2e-2, atol=2e-2)
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])


@pytest.mark.cuda
@pytest.mark.parametrize("lean", [False, True], ids=["lean_off", "lean_on"])
def test_lean_path_matches_the_jit_path(lean, monkeypatch):
    """Same results with the lean path on and off over views Triton specializes differently; the second call of a
    specialization hits the lean cache."""
    from gpperf_torch.kernels import launcher

    monkeypatch.setattr(launcher, "_enabled", lean)
    kmatmul._MATMUL.clear()
    gen = torch.Generator().manual_seed(0)
    base_a = randn(300, 200, dtype=torch.float16, device="cuda", gen=gen)
    base_b = randn(200, 300, dtype=torch.float16, device="cuda", gen=gen)
    cases = [
        (base_a[:64, :64], base_b[:64, :48]),
        (base_a[1:65, :64], base_b[:64, :48]),  # unaligned pointer
        (base_a[:63, :33], base_b[:33, :17]),  # odd sizes
        (base_a[:64, :64].t(), base_b[:64, :48]),  # transposed view
        (base_a[:1, :64], base_b[:64, :48]),  # M = 1
        (base_a[:64, :64], base_b[:64, :1]),  # N = 1
        (base_a[:64, :64], base_b[:64, :1].expand(64, 16)),  # a stride of 0
    ]
    for a, b in cases:
        for _ in range(2):
            out = kernels.launch(a, b, cfg=SMALL)
            assert_close_to_reference(out, a, b)
    torch.cuda.synchronize()
    if lean:
        assert kmatmul._MATMUL.cache, "the lean path cached no compiled kernel"


# ---- the decoder example's --cuda-graphs ---------------------------------------------------------------------
def _example():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "energy_aware_inference.py"
    spec = importlib.util.spec_from_file_location("energy_aware_inference_graphs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_static_decode_step_matches_the_eager_decode(fresh_selector, device, patched):
    """The static-cache step (what --cuda-graphs captures) gives the eager decode's tokens and logits: run eagerly
    through the interpreter, captured as a CUDA graph on a GPU."""
    ex = _example()
    torch.manual_seed(0)
    cfg = ex.DecoderConfig(vocab=50, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq=64)
    model = ex.Decoder(cfg).to(device).eval()
    if patched:
        gp.patch(model)
    prompt = torch.randint(0, 50, (2, 5), device=device)
    with torch.inference_mode():
        last, cache = ex.prefill(model, prompt)
        first = last.argmax(-1)
        tokens, logits = ex.decode(model, first, cache, 4)
        sd = ex.StaticDecoder(model, cache, first, 5 + 4, graph=device == "cuda")
        tokens2, logits2 = ex.decode_static(sd, first, 4)
    assert torch.equal(tokens, tokens2)
    for a, b in zip(logits, logits2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_example_cuda_graphs_flag(fresh_selector, capsys):
    ex = _example()
    argv = ["--layers", "1", "--d-model", "32", "--heads", "2", "--vocab", "96", "--batch", "1"]
    argv += ["--prompt-len", "4", "--new-tokens", "3", "--objectives", "time", "--cuda-graphs", "--window-s", "0.2"]
    assert ex.main(argv) == 0
    out = capsys.readouterr().out
    assert "decode steps on a static KV cache" in out
    rows = {ln.split()[0]: ln for ln in out.split("decode steps on a static KV cache")[1].splitlines()[3:5]}
    assert set(rows) == {"plain", "time"}
    for line in rows.values():
        assert float(line.split()[-1]) < 1e-3  # max |dlogit| of the static step against the eager decode
