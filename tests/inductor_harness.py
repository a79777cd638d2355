"""Fake-CUDA lowering harness: Inductor lowers a graph for a pretend H100 on a machine without a GPU.

The one test helper that touches torch internals (issue 26), kept apart so a torch whose internals differ skips
the tests that use it (`SKIP_REASON`) instead of failing them. What it does:
- fake tensors on device "cuda" (FakeTensorMode builds them without CUDA), traced to an aten graph with Inductor's
  decompositions (make_fx), then lowered with Inductor's own GraphLowering and scheduler, exactly as torch.compile
  lowers it after AOTAutograd;
- the CUDA device interface answers as an H100 SXM (sm_90, 132 SMs, 227 KiB shared memory per block);
- the generated wrapper and kernel source is captured (GraphLowering.codegen) before anything is compiled;
- every selection Inductor's autotuner makes is recorded (the choices it was handed, the one it kept), and its
  benchmarking and precompilation are intercepted: each benchmark call is counted and answered with made-up
  timings (`timings`), nothing runs on a device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import types
from collections.abc import Callable
from unittest import mock

import torch

TESTED_TORCH = "2.13"

H100 = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132, total_memory=80 * 2**30,
    max_threads_per_multi_processor=2048, max_threads_per_block=1024, warp_size=32, regs_per_multiprocessor=65536,
    shared_memory_per_block_optin=232448, shared_memory_per_block=49152, L2_cache_size=50 * 2**20, gcnArchName="",
)  # fmt: skip


def _skip_reason() -> str | None:
    if not torch.__version__.startswith(TESTED_TORCH + "."):
        return f"the fake-CUDA harness is written against torch {TESTED_TORCH}'s Inductor, not {torch.__version__}"
    try:
        from torch._dynamo.device_interface import CudaInterface  # noqa: F401
        from torch._inductor.choices import InductorChoices
        from torch._inductor.graph import GraphLowering  # noqa: F401
        from torch._inductor.select_algorithm import AlgorithmSelectorCache

        assert hasattr(InductorChoices, "_finalize_template_configs")
        assert hasattr(AlgorithmSelectorCache, "benchmark") and hasattr(AlgorithmSelectorCache, "make_precompile_fn")
    except (ImportError, AssertionError) as e:
        return f"torch {torch.__version__}'s Inductor internals differ from the harness's ({type(e).__name__}: {e})"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Inductor's Triton templates need triton"
    return None


SKIP_REASON = _skip_reason()


@dataclasses.dataclass
class Selection:
    """One call of Inductor's autotuner (AlgorithmSelectorCache): the choices handed to it, the one it kept."""

    name: str
    choices: list[dict]  # {"kind": "extern" | "template", "name", "key"?, "params"?}
    chosen: dict
    benchmarked: int  # choices timed in this call (0: one choice, nothing timed)

    @property
    def templates(self) -> list[dict]:
        return [c for c in self.choices if c["kind"] == "template"]

    @property
    def externs(self) -> list[dict]:
        return [c for c in self.choices if c["kind"] == "extern"]


@dataclasses.dataclass
class Lowered:
    code: str
    selections: list[Selection]
    benchmark_calls: int

    def template_kernels(self) -> list[str]:
        """The Triton template kernels' sources (triton_tem_*) in the generated code."""
        return re.findall(r"triton_tem_\w+ = async_compile\.triton\('triton_tem_\w+', '''(.*?)'''", self.code, re.S)

    def kernel_constants(self, src: str) -> dict:
        """{name: value} of the `NAME : tl.constexpr = value` lines at the top of a template kernel."""
        out = {}
        for name, val in re.findall(r"^\s+(\w+) : tl\.constexpr = (\S+)$", src, re.M):
            out[name] = {"True": True, "False": False}.get(val, int(val) if val.lstrip("-").isdigit() else val)
        return out


def _describe(choice) -> dict:
    from torch._inductor.select_algorithm import ExternKernelCaller

    ann = getattr(choice, "annotations", {}) or {}
    ktc = ann.get("ktc")
    d = {"kind": "extern" if isinstance(choice, ExternKernelCaller) else "template", "name": choice.name}
    if ktc is not None:
        d["params"] = dict(ktc.params.to_kwargs())
        d["template"] = getattr(ktc.template, "uid", str(ktc.template))
    if "gpperf_key" in ann:
        d["key"] = ann["gpperf_key"]
    if d["kind"] == "template" and "params" in d and "key" not in d:
        p = d["params"]
        if "BLOCK_M" in p:
            from gpperf_torch.inductor.policy import template_key

            d["key"] = template_key(p["BLOCK_M"], p["BLOCK_N"], p["BLOCK_K"], p.get("GROUP_M", 8), p["num_stages"],
                                    p["num_warps"])  # fmt: skip
    return d


def extern_last_template_fastest(choices) -> dict:
    """Made-up timings: the extern slowest, then each template faster than the one before it, so the autotuner's
    winner is the last template handed to it (not the hook's first choice)."""
    from torch._inductor.select_algorithm import ExternKernelCaller

    n = len(choices)
    return {c: (100.0 if isinstance(c, ExternKernelCaller) else float(n - i)) for i, c in enumerate(choices)}


@contextlib.contextmanager
def fake_h100(timings: Callable = extern_last_template_fastest, *, max_autotune: bool = False):
    """Inductor sees an H100 on cuda:0; benchmarks are counted and answered by `timings(choices)`; yields a
    dict with "selections" and "benchmark_calls" filled as lowering proceeds."""
    from torch._dynamo.device_interface import CudaInterface
    from torch._inductor import config
    from torch._inductor.runtime.hints import DeviceProperties
    from torch._inductor.select_algorithm import AlgorithmSelectorCache

    record: dict = {"selections": [], "benchmark_calls": 0, "_timed": 0}
    original_call = AlgorithmSelectorCache.__call__

    def call(self, name, choices, *args, **kwargs):
        before = record["_timed"]
        described = [_describe(c) for c in choices]
        node, chosen = original_call(self, name, choices, *args, **kwargs)
        record["selections"].append(Selection(name, described, _describe(chosen), record["_timed"] - before))
        return node, chosen

    def benchmark(self, choices, *args, **kwargs):
        record["benchmark_calls"] += 1
        record["_timed"] += len(choices)
        return timings(choices)

    sm = staticmethod
    # Both are cached per process: a CPU-only torch.compile earlier in the session (the examples' tests) caches
    # "no Triton-capable device", and Inductor would then refuse the pretend H100 (TritonMissing). Cleared on the
    # way in and out, so neither the pretend device nor the real one leaks across.
    from torch.utils import _triton as torch_triton

    caches = [DeviceProperties.create, torch_triton.has_triton]
    for c in caches:
        c.cache_clear()
    patches = [
        mock.patch.object(CudaInterface, "get_device_properties", sm(lambda device=None: H100)),
        mock.patch.object(CudaInterface, "get_compute_capability", sm(lambda device=None: 90)),
        mock.patch.object(CudaInterface, "is_available", sm(lambda: True)),
        mock.patch.object(CudaInterface, "current_device", sm(lambda: 0)),
        mock.patch.object(CudaInterface, "device_count", sm(lambda: 1)),
        mock.patch.object(CudaInterface, "is_bf16_supported", sm(lambda *a, **k: True)),
        mock.patch.object(CudaInterface.Worker, "get_device_properties", sm(lambda device=None: H100)),
        mock.patch.object(CudaInterface.Worker, "current_device", sm(lambda: 0)),
        mock.patch("torch.cuda.get_device_capability", lambda device=None: (9, 0)),
        mock.patch("torch.cuda.get_device_properties", lambda device=None: H100),
        # the kernels' metadata names the Triton backend's hash, which asks the (absent) CUDA driver
        mock.patch("torch.utils._triton.triton_hash_with_backend", return_value="fake-h100"),
        mock.patch.object(AlgorithmSelectorCache, "__call__", call),
        mock.patch.object(AlgorithmSelectorCache, "benchmark", benchmark),
        mock.patch.object(AlgorithmSelectorCache, "make_precompile_fn", lambda self, *a, **k: lambda: {}),
        # benchmarks at lowering only (not deferred into fusion decisions, which compile kernels); no disk cache
        # one compile thread: with a process pool warmed by an earlier torch.compile in the session, codegen
        # would hand every kernel to the pool at once (and load it: "no active GPU backend"), not just write it
        config.patch(
            compile_threads=1,
            autotune_local_cache=False,
            benchmark_epilogue_fusion=False,
            max_autotune=max_autotune,
            max_autotune_gemm=max_autotune,
        ),  # fmt: skip
    ]
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        try:
            yield record
        finally:
            for c in caches:
                c.cache_clear()


def fake_inputs(specs, *, dynamic_first_dim: bool = False):
    """(fake_mode, shape_env, tensors) for [(shape, dtype)] on "cuda"; with dynamic_first_dim the first dimension
    of the first input is a symbol (hinted by its given size), shared by every input whose first size equals it."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env)
    sym = None
    if dynamic_first_dim:
        hint = specs[0][0][0]
        s = shape_env.create_symbol(hint, ConstantSource("m"), dynamic_dim=DimDynamic.DYNAMIC)
        sym = shape_env.create_symintnode(s, hint=hint)
    out = []
    with mode:
        for i, (shape, dtype) in enumerate(specs):
            shape = list(shape)
            if sym is not None and i == 0:
                shape[0] = sym
            out.append(torch.empty(shape, device="cuda", dtype=dtype))
    return mode, shape_env, out


def lower(fn: Callable, specs, *, dynamic_first_dim: bool = False, **fake_kw) -> Lowered:
    """Trace `fn` on fake CUDA inputs [(shape, dtype)], lower it with Inductor for the pretend H100, return the
    generated code (never compiled) and what the autotuner was handed."""
    from torch._inductor.debug import DebugContext
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.graph import GraphLowering
    from torch._inductor.virtualized import V
    from torch.fx.experimental.proxy_tensor import make_fx

    mode, shape_env, inputs = fake_inputs(specs, dynamic_first_dim=dynamic_first_dim)
    with fake_h100(**fake_kw) as record:
        gm = make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode="symbolic" if dynamic_first_dim
                     else "real")(*inputs)  # fmt: skip
        with V.set_fake_mode(mode), DebugContext():
            graph = GraphLowering(gm, example_inputs=inputs, shape_env=shape_env)
            with V.set_graph_handler(graph):
                graph.run(*inputs)
                code = graph.codegen()
    code = code[0] if isinstance(code, tuple) else code
    code = getattr(code, "value", code)
    return Lowered(code, record["selections"], record["benchmark_calls"])


__all__ = ["H100", "SKIP_REASON", "TESTED_TORCH", "Lowered", "Selection", "extern_last_template_fastest",
           "fake_h100", "fake_inputs", "lower"]  # fmt: skip
