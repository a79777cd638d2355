"""The lean launch path: its cache key against Triton's own specialization (on the CPU, for an sm_90 target), and
its caching logic with a stand-in compiled kernel. The real launches run in the CUDA tests (`make gpu-check`,
with GPPERF_LEAN_LAUNCH=1 and =0)."""

from __future__ import annotations

import random

import pytest
import torch

from gpperf_torch.kernels import launcher

triton = pytest.importorskip("triton")

N_CASES = 4000
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Values that sit on every boundary Triton specializes on: 0, 1, 16-multiples, odd sizes, the int32 and int64
# edges, strides of 0 and 1.
INTS = [0, 1, 2, 3, 15, 16, 17, 32, 48, 63, 64, 100, 128, 1000, 4096, 4097, 2**31 - 16, 2**31 - 1, 2**31,
        2**31 + 16, 2**32, 2**40 + 3, 2**63 - 16, 2**63, 2**63 + 5, -1, -16, -17, -(2**31), -(2**31) - 1]  # fmt: skip


def _binder():
    """Triton's binder for our matmul kernel, built for an sm_90 CUDA target without a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    from gpperf_torch.kernels.matmul import _matmul_kernel

    fn = getattr(_matmul_kernel, "fn", _matmul_kernel)  # the interpreter wraps the Python function
    jit = JITFunction(fn)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return jit, create_function_from_signature(jit.signature, jit.params, backend)


def _tensor(rng: random.Random) -> torch.Tensor:
    """A random view: a dtype, an offset into its storage (aligned or not), transposed or sliced."""
    dtype = rng.choice(DTYPES)
    base = torch.empty(rng.randint(48, 80), dtype=dtype)
    off = rng.choice([0, 0, 1, 2, 3, 4, 7, 8, 16])
    rows = rng.randint(1, 4)
    t = base[off : off + rows * 8].view(rows, 8)
    return t.t() if rng.random() < 0.3 else t


def _case(rng: random.Random, jit) -> tuple[tuple, dict]:
    params = [p for p in jit.params if not p.is_constexpr]
    n_ptr = sum(p.name.endswith("_ptr") for p in params)
    args: list = [_tensor(rng) for _ in range(n_ptr)]
    if rng.random() < 0.1:
        args[-1] = None  # a pointer passed as None becomes a constexpr None in Triton
    args += [rng.choice(INTS) for _ in range(len(params) - n_ptr)]
    kwargs = {}
    for p in jit.params:
        if not p.is_constexpr:
            continue
        if p.name.startswith(("BLOCK", "GROUP", "SPLIT")):
            kwargs[p.name] = rng.choice([1, 16, 32])
        elif p.name == "INPUT_PRECISION":
            kwargs[p.name] = rng.choice(["tf32", "ieee"])
        elif p.name.startswith("DIV_"):  # alignment facts (kernels/align.py): powers of two up to 8
            kwargs[p.name] = rng.choice([1, 2, 4, 8])
        else:  # flags
            kwargs[p.name] = rng.choice([True, False, 1, 0]) if rng.random() < 0.1 else rng.choice([True, False])
    kwargs["num_warps"] = rng.choice([4, 8])
    kwargs["num_stages"] = rng.choice([2, 3])
    kwargs["debug"] = rng.random() < 0.1  # what Triton's run adds from its knobs
    kwargs["instrumentation_mode"] = ""
    return tuple(args), kwargs


def _triton_key(binder, args, kwargs) -> str:
    from triton.runtime.jit import compute_cache_key

    _bound, specialization, options = binder(*args, **kwargs)
    return compute_cache_key({}, specialization, options)


def test_key_agrees_with_triton_specialization_over_random_arguments():
    """Equal keys <=> equal Triton specializations (the string Triton's kernel cache is keyed by)."""
    jit, binder = _binder()
    rng = random.Random(0)
    ours_to_triton: dict = {}
    triton_to_ours: dict = {}
    fast_used = 0
    args, kwargs = _case(rng, jit)
    for _ in range(N_CASES):
        # Mostly one argument of the previous case redrawn (often to a value Triton treats alike, so keys repeat
        # and the "equal keys" direction is exercised), sometimes a fresh case.
        if rng.random() < 0.15:
            args, kwargs = _case(rng, jit)
        else:
            fresh_args, fresh_kwargs = _case(rng, jit)
            i = rng.randrange(len(args) + len(kwargs))
            if i < len(args):
                args = (*args[:i], fresh_args[i], *args[i + 1 :])
            else:
                name = list(kwargs)[i - len(args)]
                kwargs = dict(kwargs, **{name: fresh_kwargs[name]})
        ours = launcher.spec_key(args, kwargs)
        try:
            fast = launcher._fast_key(args, kwargs)
        except AttributeError:
            fast = None
        if fast is not None:
            fast_used += 1
            assert fast == ours, (args, kwargs)
        theirs = _triton_key(binder, args, kwargs)
        assert ours_to_triton.setdefault(ours, theirs) == theirs, f"one key, two Triton specializations: {args}"
        assert triton_to_ours.setdefault(theirs, ours) == ours, f"one Triton specialization, two keys: {args}"
    # the random cases must exercise both directions: many distinct specializations, and repeats of each
    assert 200 < len(ours_to_triton) < N_CASES * 0.95
    assert fast_used > N_CASES * 0.8


@pytest.mark.parametrize("x", INTS)
def test_int_codes_match_triton_one_by_one(x):
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    ty, spec = native_specialize_impl(BaseBackend, x, False, True, True)
    code = launcher._int_code(x)
    if ty == "constexpr":
        assert code == 1 and spec == 1
    else:
        assert {"i32": 2, "i64": 4, "u64": 8}[ty] == code & ~1
        assert (spec == "D") == bool(code & 1)


def test_do_not_specialize_keeps_only_the_type():
    assert launcher.spec_key((32,), {}, frozenset({0})) == launcher.spec_key((48,), {}, frozenset({0}))
    assert launcher.spec_key((1,), {}, frozenset({0})) == launcher.spec_key((3,), {}, frozenset({0}))
    assert launcher.spec_key((32,), {}) != launcher.spec_key((33,), {})
    assert launcher.spec_key((3,), {}, frozenset({0})) != launcher.spec_key((2**31,), {}, frozenset({0}))


# ---- the cache, with a stand-in for Triton's JIT function and CompiledKernel ----------------------------------
class _Param:
    def __init__(self, name, constexpr, default=None):
        self.name, self.is_constexpr, self.default = name, constexpr, default
        self.has_default = default is not None
        self.do_not_specialize = False


class _Compiled:
    function = "fn"
    packed_metadata = "meta"

    def __init__(self):
        self.launches: list = []

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.launches.append(args)


class _FakeJit:
    """Records how often the slow path (bind + maybe compile + launch) runs; returns one compiled kernel per
    specialization, as Triton's kernel cache does."""

    def __init__(self):
        self.params = [_Param("x_ptr", False), _Param("n", False), _Param("BLOCK", True), _Param("FLAG", True, False)]
        self.pre_run_hooks: list = []
        self.slow_calls = 0
        self.kernels: dict = {}

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.slow_calls += 1
            return self.kernels.setdefault(launcher.spec_key(args, kwargs), _Compiled())

        return call


@pytest.fixture
def lean(monkeypatch):
    monkeypatch.setattr(launcher, "_INTERPRETING", False)
    monkeypatch.setattr(launcher, "_enabled", True)
    monkeypatch.setattr(launcher, "_driver_functions", lambda: (lambda: 0, lambda device: 1234))
    fake = _FakeJit()
    return fake, launcher.LeanKernel(fake)


def test_second_launch_calls_the_compiled_kernel_directly(lean):
    fake, k = lean
    x = torch.empty(64)
    k[(3, 2)](x, 64, BLOCK=32, num_warps=4)
    assert fake.slow_calls == 1
    k[(5, 1, 7)](x, 128, BLOCK=32, num_warps=4)  # same specialization (128 and 64: i32, divisible by 16)
    assert fake.slow_calls == 1
    (compiled,) = fake.kernels.values()
    (launch,) = compiled.launches
    assert launch[:4] == (5, 1, 7, 1234)  # grid padded to 3-D, the current stream
    assert launch[-4:] == (x, 128, 32, False)  # runtime args, then constexprs in signature order (defaults too)


@pytest.mark.parametrize(
    "second",
    [
        lambda x: ((x, 1), dict(BLOCK=32, num_warps=4)),  # 1 is a constexpr in Triton
        lambda x: ((x, 65), dict(BLOCK=32, num_warps=4)),  # not divisible by 16
        lambda x: ((x, 2**31), dict(BLOCK=32, num_warps=4)),  # int64
        lambda x: ((x[1:], 64), dict(BLOCK=32, num_warps=4)),  # pointer not 16-byte aligned
        lambda x: ((x.half(), 64), dict(BLOCK=32, num_warps=4)),  # dtype
        lambda x: ((x, 64), dict(BLOCK=64, num_warps=4)),  # constexpr
        lambda x: ((x, 64), dict(BLOCK=32, FLAG=True, num_warps=4)),
        lambda x: ((x, 64), dict(BLOCK=32, num_warps=8)),  # launch option
    ],
)
def test_a_new_specialization_goes_through_triton(lean, second):
    fake, k = lean
    x = torch.empty(64)
    k[(1,)](x, 64, BLOCK=32, num_warps=4)
    args, kwargs = second(x)
    k[(1,)](*args, **kwargs)
    assert fake.slow_calls == 2


def test_switch_off_always_binds_through_triton(lean, monkeypatch):
    fake, k = lean
    monkeypatch.setattr(launcher, "_enabled", False)
    x = torch.empty(64)
    for _ in range(3):
        k[(1,)](x, 64, BLOCK=32)
    assert fake.slow_calls == 3 and not k.cache


def test_interpreter_never_takes_the_lean_path(monkeypatch):
    monkeypatch.setattr(launcher, "_INTERPRETING", True)
    monkeypatch.setattr(launcher, "_enabled", True)
    assert not launcher.enabled()


def test_launch_hooks_are_passed_when_registered(lean):
    """With no hook registered the launcher gets None (nothing to call); with one, Triton's hook chain and the
    launch metadata, as Triton's own run passes them."""
    from triton import knobs

    fake, k = lean
    x = torch.empty(64)
    k[(1,)](x, 64, BLOCK=32)
    k[(1,)](x, 64, BLOCK=32)
    (compiled,) = fake.kernels.values()
    assert compiled.launches[-1][6:9] == (None, None, None)  # metadata, enter hook, exit hook

    def hook(metadata):
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        k[(1,)](x, 64, BLOCK=32)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert compiled.launches[-1][7] is knobs.runtime.launch_enter_hook


def _operand(rng: random.Random, rows: int, cols: int, batch: int | None, dtype: torch.dtype) -> torch.Tensor:
    """A random operand view: offset into its storage, transposed or not, a broadcast (stride 0) batch or not."""
    shape = (rows, cols) if batch is None else (batch, rows, cols)
    off = rng.choice([0, 0, 1, 2, 3, 4, 8])  # pointers 16-, 2-, 4-, 8-byte aligned (fp16)
    base = torch.empty(off + rows * cols * (batch or 1), dtype=dtype)[off:]
    transposed = rng.random() < 0.4
    t = base.view(*shape[:-2], cols, rows).transpose(-1, -2) if transposed else base.view(shape)
    if batch and rng.random() < 0.3:
        t = t[:1].expand(shape)
    return t


def test_key_agrees_with_triton_on_what_launch_passes(monkeypatch):
    """The arguments `kernels.launch` really passes (recorded, not launched) for random views, sizes, dtypes,
    configs, bias and TF32: LeanKernel's key (Triton's knobs included) <=> Triton's specialization."""
    from triton import knobs

    from gpperf_torch.kernels import TileConfig, launch
    from gpperf_torch.kernels import matmul as kmatmul

    monkeypatch.setattr(launcher, "_driver_functions", lambda: (lambda: 0, lambda device: 0))
    recorded = []
    monkeypatch.setattr(kmatmul._MATMUL, "run", lambda grid, args, kwargs: recorded.append((args, kwargs)))
    monkeypatch.setattr(kmatmul._REDUCE, "run", lambda grid, args, kwargs: None)
    jit, binder = _binder()
    lean = launcher.LeanKernel(jit)  # (a JIT function, not the interpreter's wrapper, so that it has params)
    rng = random.Random(1)
    sizes = [1, 2, 4, 8, 15, 16, 17, 24, 32, 33, 36, 40, 48]  # every divisor class: 1, 2, 4, 8, 16, odd
    configs = [TileConfig(16, 16, 16), TileConfig(32, 16, 32, split_k=2), TileConfig(16, 32, 16, group_m=4)]
    n_cases = 600
    for _ in range(n_cases):
        m, n, k = (rng.choice(sizes) for _ in range(3))
        dtype = rng.choice(DTYPES)
        batch = rng.choice([None, 1, 3])

        a, b = _operand(rng, m, k, batch, dtype), _operand(rng, k, n, batch, dtype)
        bias = None
        if rng.random() < 0.4:
            bias = torch.empty(n + 2, dtype=rng.choice(DTYPES))[rng.choice([0, 1, 2]) :][:n]
        launch(a, b, cfg=rng.choice(configs), bias=bias, allow_tf32=rng.random() < 0.5)
    assert len(recorded) == n_cases
    ours_to_triton: dict = {}
    triton_to_ours: dict = {}
    for args, kwargs in recorded:
        ours = lean.key(args, kwargs)
        extra = dict(debug=knobs.runtime.debug, instrumentation_mode=knobs.compilation.instrumentation_mode)
        theirs = _triton_key(binder, args, {**kwargs, **extra})
        assert ours_to_triton.setdefault(ours, theirs) == theirs, args
        assert triton_to_ours.setdefault(theirs, ours) == ours, args
    assert 50 < len(ours_to_triton) < n_cases  # distinct specializations, and repeats of some


@pytest.mark.parametrize(
    "raw, on, warns",
    [("1", True, False), ("ON", True, False), ("true", True, False), ("0", False, False), ("", False, False),
     ("off", False, False), ("maybe", False, True), ("2", False, True)],
)  # fmt: skip
def test_switch_from_the_environment(monkeypatch, caplog, raw, on, warns):
    monkeypatch.setenv(launcher.ENV_VAR, raw)
    with caplog.at_level("WARNING", logger="gpperf_torch.kernels.launcher"):
        assert launcher._from_env() is on
    assert ("GPPERF_LEAN_LAUNCH" in caplog.text) is warns
