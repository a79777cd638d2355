"""The Inductor hook (gpperf_torch.inductor, issue 26) on a pretend H100, through Inductor's own lowering on a CPU:
predict gives one choice, plan()'s first row (explain's), with the epilogue fused and EVEN_K right, nothing timed;
the same in a thread started after install(); verify hands Inductor's autotuner the extern plus exactly row 0's
verify_candidates and the autotuner picks; dynamic M compiles; uninstall restores Inductor's own list."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import gpperf_torch as gp
from gpperf_torch.inductor import policy, switch

harness = pytest.importorskip("inductor_harness")
pytestmark = pytest.mark.skipif(harness.SKIP_REASON is not None, reason=str(harness.SKIP_REASON))

# (M, K, N): LLM and vision widths, aligned and odd
SHAPES = [
    (16, 4096, 4096),  # LLM decode-ish batch, Llama width
    (128, 4096, 11008),  # Llama-7B MLP up
    (512, 2048, 8192),  # 1B-class MLP
    (1, 4096, 14336),  # one token, Mistral MLP
    (77, 768, 3072),  # CLIP text MLP (odd M)
    (197, 768, 3072),  # ViT-B/16 MLP (odd M)
    (257, 1280, 5120),  # ViT-H/14 MLP
    (3136, 96, 384),  # Swin-T stage-1 MLP
    (50, 1024, 4096),  # ViT-L/14 at 224 (odd M)
    (1000, 1280, 1000),  # classifier head (odd N)
    (129, 4000, 999),  # odd everything, K not a multiple of 64
    (33, 4095, 1001),  # odd everything, K odd
]
DTYPES = [torch.float16, torch.bfloat16]


def linear_relu(x, w, b):
    return torch.relu(F.linear(x, w, b))


def matmul_gelu(a, w):
    return F.gelu(a @ w)


def case(shape, dtype, path):
    """(fn, input specs, GemmSpec the hook should see, activation marker in the kernel)."""
    m, k, n = shape
    name = str(dtype).replace("torch.", "")
    if path == "linear":
        specs = [((m, k), dtype), ((n, k), dtype), ((n,), dtype)]
        spec = policy.GemmSpec(m, n, k, name, b_trans=True, epilogue="bias_act")
        return linear_relu, specs, spec, "maximum"
    specs = [((m, k), dtype), ((k, n), dtype)]
    return matmul_gelu, specs, policy.GemmSpec(m, n, k, name, epilogue="act"), "erf"


@pytest.fixture
def hook():
    """install(...) for one test; always uninstalled after."""
    yield switch.install
    switch.uninstall()


def _gemm_selection(low):
    sels = [s for s in low.selections if s.name in ("mm", "addmm", "bmm")]
    assert len(sels) == 1, [s.name for s in low.selections]
    return sels[0]


def _check_kernel(low, key: str, k: int, act_marker: str) -> None:
    """One template kernel with the chosen config's tiles, EVEN_K exactly when BLOCK_K divides K, the activation
    inside it (fused) and no separate pointwise kernel."""
    kernels = low.template_kernels()
    assert len(kernels) == 1, low.code[:3000]
    consts = low.kernel_constants(kernels[0])
    bm, bn, bk = (int(v) for v in key.split("_")[0].split("x"))
    assert (consts["BLOCK_M"], consts["BLOCK_N"], consts["BLOCK_K"]) == (bm, bn, bk)
    assert consts["EVEN_K"] is (k % bk == 0), (key, k, consts)
    assert act_marker in kernels[0], "the activation is not in the template's epilogue"
    assert "triton_poi" not in low.code, "a separate pointwise kernel: the epilogue was not fused"


def _check_predict(low, spec, act_marker):
    sel = _gemm_selection(low)
    row0 = gp.explain(spec.m, spec.n, spec.k, dtype=spec.dtype, a_trans=spec.a_trans, b_trans=spec.b_trans,
                      batch=spec.batch, epilogue=spec.epilogue, backend="inductor", gpu="h100")[0]  # fmt: skip
    assert len(sel.choices) == 1 and sel.benchmarked == 0 and low.benchmark_calls == 0
    if row0["config"] == "torch":
        assert sel.chosen["kind"] == "extern" and not low.template_kernels()
        assert "extern_kernels." in low.code
    else:
        assert sel.chosen["kind"] == "template" and sel.chosen["key"] == row0["config"]
        _check_kernel(low, row0["config"], spec.k, act_marker)
    return row0


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in SHAPES])
def test_predict_is_one_choice_the_plans_first_row(hook, shape, dtype):
    path = "linear" if SHAPES.index(shape) % 2 == 0 else "matmul"
    fn, specs, spec, marker = case(shape, dtype, path)
    hook("predict")
    _check_predict(harness.lower(fn, specs), spec, marker)


def test_predict_picks_templates_somewhere(hook):
    """The shapes above are not all decided for cuBLAS: the template path is exercised (fused epilogue)."""
    hook("predict")
    picks = {policy.plan(case(s, torch.float16, "linear")[2], gpu="h100")[0]["config"] for s in SHAPES}
    assert picks - {"torch"}, picks


@pytest.mark.parametrize("path", ["linear", "matmul"])
def test_predict_in_a_thread_started_after_install(hook, path):
    fn, specs, spec, marker = case((197, 768, 3072), torch.bfloat16, path)
    hook("predict")
    out: dict = {}

    def work():
        try:
            out["low"] = harness.lower(fn, specs)
        except BaseException as e:  # surfaced below
            out["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in out, out.get("error")
    _check_predict(out["low"], spec, marker)


@pytest.mark.parametrize(
    "shape,dtype,path",
    [((128, 4096, 11008), torch.float16, "linear"), ((197, 768, 3072), torch.bfloat16, "matmul"),
     ((129, 4000, 999), torch.float16, "matmul"), ((3136, 96, 384), torch.bfloat16, "linear")],
)  # fmt: skip
def test_verify_hands_the_autotuner_the_extern_and_row0s_candidates(hook, shape, dtype, path):
    fn, specs, spec, marker = case(shape, dtype, path)
    hook("verify", top_k=3)
    row0 = policy.plan(spec, mode="verify", top_k=3, gpu="h100")[0]
    want = [c for c in row0["verify_candidates"] if c != "torch"]
    assert len(want) <= 3
    low = harness.lower(fn, specs)  # timings: the extern slowest, the last template fastest
    sel = _gemm_selection(low)
    assert len(sel.externs) == 1 and [c["key"] for c in sel.templates] == want
    if want:
        assert sel.benchmarked == len(sel.choices) and low.benchmark_calls == 1
        assert sel.chosen["key"] == want[-1], "the autotuner's fastest, not the plan's first"
        _check_kernel(low, want[-1], spec.k, marker)
    # the same GEMM with the extern timed fastest: the autotuner keeps cuBLAS, whatever the plan ranked first
    low = harness.lower(fn, specs, timings=lambda cs: {c: (0.5 if c.name.startswith("extern") else 1.0) for c in cs})
    assert _gemm_selection(low).chosen["kind"] == "extern"


@pytest.mark.parametrize("mode", ["predict", "verify"])
def test_dynamic_m_compiles_with_the_hints_config(hook, mode):
    fn, specs, spec, marker = case((197, 768, 3072), torch.float16, "linear")
    hook(mode)
    low = harness.lower(fn, specs, dynamic_first_dim=True)
    sel = _gemm_selection(low)
    row0 = policy.plan(spec, mode=mode, gpu="h100")[0]
    if mode == "predict":
        assert len(sel.choices) == 1 and low.benchmark_calls == 0
        assert sel.chosen.get("key", "torch") == row0["config"]
    else:
        assert [c["key"] for c in sel.templates] == [c for c in row0["verify_candidates"] if c != "torch"]
    kernels = low.template_kernels()
    if kernels:
        assert "M = ks0" in kernels[0] or "ks0" in kernels[0], "M is not symbolic in the template"


def test_bmm(hook):
    fn = torch.bmm
    specs = [((8, 197, 64), torch.float16), ((8, 64, 197), torch.float16)]
    hook("predict")
    low = harness.lower(fn, specs)
    sel = _gemm_selection(low)
    spec = policy.GemmSpec(197, 197, 64, "float16", batch=8)
    assert len(sel.choices) == 1 and low.benchmark_calls == 0
    assert sel.chosen.get("key", "torch") == policy.plan(spec, gpu="h100")[0]["config"]


@pytest.mark.parametrize("max_autotune", [False, True], ids=["default", "max-autotune"])
def test_uninstall_restores_inductors_own_list(max_autotune):
    fn, specs, spec, _ = case((197, 768, 3072), torch.float16, "linear")
    own = _gemm_selection(harness.lower(fn, specs, max_autotune=max_autotune))
    switch.install("predict")
    try:
        hooked = _gemm_selection(harness.lower(fn, specs, max_autotune=max_autotune))
        assert len(hooked.choices) == 1
    finally:
        switch.uninstall()
    again = _gemm_selection(harness.lower(fn, specs, max_autotune=max_autotune))
    names = [(c["kind"], c.get("key"), c["name"].split("_")[0]) for c in own.choices]
    assert [(c["kind"], c.get("key"), c["name"].split("_")[0]) for c in again.choices] == names
    if max_autotune:  # Inductor's full list: the extern and every template config it offers
        assert len(own.templates) == len(policy.offered_keys(spec)) > 3 and own.externs
        assert [c["key"] for c in own.templates] == policy.offered_keys(spec), "offered_keys is Inductor's list"
    else:
        assert [c["kind"] for c in own.choices] == ["extern"]  # plain torch.compile: cuBLAS alone


@pytest.mark.parametrize("path", ["linear", "matmul"])
def test_predict_under_max_autotune_benchmarks_nothing(hook, path):
    """Under max-autotune Inductor lists its templates itself (addmm: in a call of their own): still one choice."""
    fn, specs, spec, marker = case((128, 4096, 11008), torch.bfloat16, path)
    hook("predict")
    low = harness.lower(fn, specs, max_autotune=True)
    _check_predict(low, spec, marker)


def test_cache_key_names_the_hook():
    """The FX graph cache key includes the hook's uuid: with, without and per mode, keys differ."""
    from torch._inductor import config

    def key():
        return config.save_config_portable().get("inductor_choices_class")

    before = key()
    with gp.inductor.enabled("predict"):
        on_predict = key()
        assert gp.inductor.installed()
    with gp.inductor.enabled("verify", top_k=2):
        on_verify = key()
    assert not gp.inductor.installed() and key() == before is None
    assert on_predict.startswith("gpperf-") and "predict" in on_predict
    assert on_verify != on_predict and "k2" in on_verify
    assert torch._inductor.config.inductor_choices_class is None


def test_importing_the_package_imports_no_inductor_internals():
    """The op path must not depend on torch._inductor: gpperf_torch and gpperf_torch.inductor import none of it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import sys, torch; before = {m for m in sys.modules if m.startswith('torch._inductor')}; "
        "import gpperf_torch as gp; gp.inductor; "
        "print(sorted({m for m in sys.modules if m.startswith('torch._inductor')} - before))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_a_torch_without_the_hook_says_so_and_the_op_path_works(monkeypatch):
    from torch._inductor.choices import InductorChoices

    monkeypatch.delattr(InductorChoices, "_finalize_template_configs")
    with pytest.raises(gp.inductor.HookUnavailableError, match="op path"):
        gp.inductor.install("predict")
    assert not gp.inductor.installed()
    assert torch._inductor.config.inductor_choices_class is None
    a, b = torch.randn(20, 16), torch.randn(16, 12)
    torch.testing.assert_close(gp.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)


def test_install_checks_its_arguments_and_a_foreign_choices_class():
    with pytest.raises(ValueError, match="mode"):
        gp.inductor.install("fast")
    with pytest.raises(ValueError, match="top_k"):
        gp.inductor.install("verify", top_k=0)
    with (
        torch._inductor.config.patch(inductor_choices_class=lambda: None),
        pytest.raises(RuntimeError, match="already"),
    ):
        gp.inductor.install("predict")
    assert not gp.inductor.installed()


def test_a_thread_sees_the_config_default_and_uninstall_turns_its_handler_passive():
    """After install() a new thread's V.choices is the hook; after uninstall() that handler defers (settings None)."""
    from torch._inductor.virtualized import V

    from gpperf_torch.inductor.hook import GpperfChoices

    seen = {}

    def probe(tag):
        seen[tag] = (type(V.choices).__name__, torch._inductor.config.inductor_choices_class)

    switch.install("verify")
    try:
        t = threading.Thread(target=probe, args=("during",))
        t.start()
        t.join()
        assert isinstance(V.choices, GpperfChoices)
    finally:
        switch.uninstall()
    t = threading.Thread(target=probe, args=("after",))
    t.start()
    t.join()
    assert seen["during"] == ("GpperfChoices", GpperfChoices)
    assert seen["after"] == ("InductorChoices", None)
    assert type(V.choices).__name__ == "InductorChoices" and gp.inductor.current() is None


@pytest.mark.parametrize("path", ["linear", "matmul"])
def test_verify_under_max_autotune_hands_over_the_same_set(hook, path):
    fn, specs, spec, _ = case((77, 768, 3072), torch.float16, path)
    hook("verify", top_k=3)
    want = [c for c in policy.plan(spec, mode="verify", top_k=3, gpu="h100")[0]["verify_candidates"] if c != "torch"]
    sel = _gemm_selection(harness.lower(fn, specs, max_autotune=True))
    assert len(sel.externs) == 1 and [c["key"] for c in sel.templates] == want
    assert sel.benchmarked == len(sel.choices) == 1 + len(want)


def test_install_after_torch_compile_and_no_cache_reuse(monkeypatch, tmp_path):
    """CPU torch.compile (the hook defers on a CPU, but Inductor still consults it): installed after torch.compile()
    was called, the hook is consulted at the first call; and a graph compiled without it is not taken from the FX
    graph cache once it is installed (the cache key carries its uuid)."""
    from gpperf_torch.inductor.hook import GpperfChoices

    calls = []
    original = GpperfChoices._finalize_template_configs

    def counted(self, *args, **kwargs):
        calls.append(args[3])  # op_name
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GpperfChoices, "_finalize_template_configs", counted)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    a, w = torch.randn(8, 16), torch.randn(16, 4)

    def f(a, w):
        return a @ w  # an extern mm alone: no C++ kernel to compile on the CPU

    with torch._inductor.config.patch(fx_graph_cache=True):
        torch._dynamo.reset()
        compiled = torch.compile(f)
        torch.testing.assert_close(compiled(a, w), f(a, w))  # without the hook: cached
        assert calls == []
        torch._dynamo.reset()
        compiled = torch.compile(f)
        switch.install("predict")  # after torch.compile(), before the first call
        try:
            torch.testing.assert_close(compiled(a, w), f(a, w))
        finally:
            switch.uninstall()
            torch._dynamo.reset()
    assert "mm" in calls, "the graph came from the cache, or the hook was not consulted"
