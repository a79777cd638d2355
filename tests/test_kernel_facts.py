"""Kernel facts: the shipped table against fresh cross-compiles, the launch it describes, validity from it.

Cross-compiling needs no GPU (Triton's wheel carries ptxas and cuobjdump); it runs in a subprocess because this
process imported Triton in interpreter mode. The fresh compiles are kept to a handful (~1-2 s each).
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from gpperf_torch.kernels import TileConfig, check_config, launch
from gpperf_torch.kernels import facts as F
from gpperf_torch.kernels import matmul as matmul_mod
from gpperf_torch.kernels.configs import mma_family
from gpperf_torch.kernels.crosscompile import CompileClass, class_of_entry, facts_many, job_class, launch_args
from gpperf_torch.selection import ranking
from gpperf_torch.selection import state as state_mod

from helpers import randn

H100, A100 = (9, 0), (8, 0)
LIMIT = {90: 232448, 80: 166912}  # max shared memory per block: H100/H200, A100


@pytest.fixture(scope="module")
def shipped():
    if not F.TABLE_PATH.is_file():
        pytest.fail(f"{F.TABLE_PATH} missing: build it with `python -m gpperf_torch.kernels.build_facts`")
    t = F.FactsTable.load()
    if t.triton != F._triton_version():
        pytest.skip(f"table built with triton {t.triton}, this is {F._triton_version()}: fresh compiles would differ")
    return t


def test_table_matches_this_kernel(shipped):
    assert shipped.kernel_hash == F.kernel_source_hash(), (
        "the kernel changed since the facts table was built: rerun "
        "`nice -n 15 python -m gpperf_torch.kernels.build_facts --jobs 2` (docs/kernel_facts.md)"
    )
    assert F.table() is not None
    # The issue-27 rebuild was cut by its CPU budget (docs/kernel_facts.md lists what it holds): fp16 in nn.Linear's
    # layout on both targets, aligned and the two most common unaligned classes, at least.
    assert len(shipped) > 900
    assert {k.split("/")[0] for k in shipped.entries} == {"sm80", "sm90"}
    for arch in (80, 90):
        assert {f"sm{arch}/f16/nt/even", f"sm{arch}/f16/nt/m16n8keven"} <= set(shipped.entries)


def test_sampled_entries_match_fresh_compiles(shipped):
    rng = random.Random(15)
    jobs, want = [], []
    for arch in ("sm80", "sm90"):
        key = rng.choice(sorted(k for k in shipped.entries if k.startswith(arch)))
        cfg_key = rng.choice(sorted(shipped.entries[key]))
        cfg = TileConfig.from_key(cfg_key)
        jobs.append((cfg, job_class(cfg, key)))
        want.append(shipped.get(cfg, key))
    # bf16 reads the f16 entries: check that alias on one of them
    f16_key = rng.choice(sorted(k for k in shipped.entries if "/f16/" in k))
    cfg = TileConfig.from_key(rng.choice(sorted(shipped.entries[f16_key])))
    jobs.append((cfg, dataclasses.replace(job_class(cfg, f16_key), dtype="bfloat16")))
    want.append(shipped.get(cfg, f16_key))
    got = facts_many(jobs)
    for (cfg, cls), w, g in zip(jobs, want, got, strict=True):
        assert {f: g[f] for f in F.FIELDS} == w, f"{cfg.key} {cls}"


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _spec(fn, args, kwargs, arch=90):
    from triton.runtime.jit import create_function_from_signature

    from gpperf_torch.kernels.crosscompile import _backend

    _, backend = _backend(arch)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    _, spec, _ = binder(*args, **kwargs)
    return spec


@pytest.mark.parametrize(
    ("m", "n", "k", "a_t", "b_t", "split"),
    [
        (64, 96, 128, False, False, 1),
        (64, 96, 128, False, True, 1),
        (33, 100, 128, True, False, 1),  # M and N not divisible by 16: A's leading dimension is M
        (1, 64, 80, False, True, 1),  # M == 1 is a constant; K % 16 == 0 but not % BLOCK_K
        (48, 64, 77, True, True, 1),
        (32, 48, 256, False, False, 4),  # split-K: fp32 workspace
        (24, 40, 72, False, True, 1),  # K % 16 == 8, N % 16 == 8 (issue 27's divisor classes)
        (20, 36, 68, True, False, 1),  # A transposed: M % 16 == 4 is A's leading stride; K % 16 == 4
        (16, 34, 66, False, False, 2),  # N and K % 16 == 2, split-K
        (40, 17, 64, True, True, 1),  # odd N
    ],
)
def test_cross_compile_arguments_specialize_like_launch(m, n, k, a_t, b_t, split, monkeypatch):
    from gpperf_torch.kernels.crosscompile import _jit_function

    fn = _jit_function()  # the real kernel, before the recorder stands in for it
    rec = _Recorder()
    monkeypatch.setattr(matmul_mod, "_MATMUL", rec)
    monkeypatch.setattr(matmul_mod, "_REDUCE", _Recorder())  # nothing to reduce: not run
    a = randn(k, m, dtype=torch.float16, device="cpu").t() if a_t else randn(m, k, dtype=torch.float16, device="cpu")
    b = randn(n, k, dtype=torch.float16, device="cpu").t() if b_t else randn(k, n, dtype=torch.float16, device="cpu")
    cfg = TileConfig(16, 32, 32, split_k=split, num_warps=4, num_stages=3)
    launch(a, b, cfg=cfg)
    (args, kwargs), *_ = rec.calls
    run = F.launched_config(cfg, m, n, k)
    cls = CompileClass.of_launch(90, "float16", run, m, n, k, a_trans=a_t, b_trans=b_t, split=run.split_k > 1)
    mine_args, mine_kwargs = launch_args(run, cls)
    assert _spec(fn, mine_args, mine_kwargs) == _spec(fn, args, kwargs)


def test_entry_keys_and_classes():
    cfg = TileConfig(64, 64, 64)
    assert F.align_class(4096, 4096, 4096, cfg) == "even"
    assert F.align_class(4096, 4096, 4112, cfg) == "a"
    assert F.align_class(1, 50257, 4096, cfg) == "m1nxkeven"
    assert F.entry_key(90, F.dtype_class("bfloat16"), False, True, "even") == "sm90/f16/nt/even"
    assert F.dtype_class("float32", tf32=True) == "tf32" and F.dtype_class("float32") == "f32"
    assert class_of_entry("sm90/f16/nt/even") == CompileClass(90, "float16", b_trans=True)
    assert class_of_entry("sm80/f32/tn/m1nxk16") == CompileClass(80, "float32", a_trans=True, m="1", n="x", k="16")
    assert class_of_entry("sm80/tf32/tt/a") == CompileClass(80, "tf32", a_trans=True, b_trans=True, k="16")
    assert class_of_entry("sm90/f16/nt/m16n8k4") == CompileClass(90, "float16", b_trans=True, n="8", k="4")
    with pytest.raises(ValueError, match="kernel-facts entry key"):
        class_of_entry("sm90/f16/nt/m3n2k2")
    # issue 27's classes: the largest power of two dividing N and K (8 elements = 16 B in fp16, 4 in fp32)
    assert F.align_class(4096, 4096, 4104, cfg) == "m16n16k8"
    assert F.align_class(4096, 1000, 4096, cfg) == "m16n8keven"
    assert F.align_class(4096, 4096, 4104, cfg, elem_size=4) == "m16n16k4"  # fp32: 8 elements is 32 B, 4 is 16
    assert F.align_class(4096, 4098, 4100, cfg) == "m16n2k4"
    # M is a leading stride only with A transposed
    assert F.align_class(4104, 4096, 4096, cfg) == "mxn16keven"
    assert F.align_class(4104, 4096, 4096, cfg, a_trans=True) == "m8n16keven"
    # launch() caps split-K at the number of BLOCK_K steps: the binary that runs is the capped one
    assert F.launched_config(TileConfig(16, 32, 64, split_k=8), 64, 64, 256).split_k == 4


def test_lookup_misses_what_was_not_compiled(shipped):
    key = "sm90/f16/nt/even"
    cfg = TileConfig.from_key(next(c for c in sorted(shipped.entries[key]) if "_s1_" in c))
    hit = F.lookup(cfg, arch=90, dtype="bfloat16", b_trans=True, m=4096, n=4096, k=4096)
    assert hit == shipped.get(cfg, key)
    assert F.lookup(cfg, arch=90, dtype="float16", b_trans=True, m=4096, n=4094, k=4096) is None  # N % 16 == 2
    assert F.lookup(cfg, arch=86, dtype="float16", b_trans=True) is None  # no sm_86 entries


def _fake_table(entries: dict) -> F.FactsTable:
    return F.FactsTable(
        {
            "format": F.FORMAT,
            "format_version": F.FORMAT_VERSION,
            "triton": F._triton_version(),
            "kernel_hash": F.kernel_source_hash(),
            "entries": entries,
        }
    )


def test_validity_from_facts_rejects_spills_and_shared_overflow(monkeypatch, fresh_selector):
    from gpperf_torch.measure.device import KNOWN_DEVICES

    st = state_mod.State(KNOWN_DEVICES["h100"])
    cands = [c for c in st.model.candidates if c is not None][:3]
    spills, too_big, fine = cands
    key = "sm90/f16/nt/even"
    monkeypatch.setattr(
        F,
        "table",
        lambda: _fake_table(
            {
                key: {
                    spills.key: [255, 64, 1024, "wgmma", 900],
                    too_big.key: [128, 0, LIMIT[90] + 1, "wgmma", 700],
                    fine.key: [128, 0, 1024, "wgmma", 700],
                }
            }
        ),
    )
    kw = dict(capability=H100, dtype="float16", b_trans=True, max_shared_memory=LIMIT[90])
    assert "spills 64 B" in F.check(spills, **kw)
    assert "compiler facts" in F.check(too_big, **kw)
    assert F.check(fine, **kw) is None
    valid = ranking.valid_candidates(st, "float16", (4096, 4096, 4096, False, True, False))
    assert fine in valid and spills not in valid and too_big not in valid
    # another alignment class (odd N) has no facts here: the aligned binary's spill still rules the config out,
    # the estimate decides its shared memory
    other = ranking.valid_candidates(st, "float16", (4096, 4095, 4096, False, True, False))
    assert fine in other and spills not in other
    assert "aligned binary" in F.check(spills, **{**kw, "n": 4095})
    # another layout (nn) has no entry at all: the estimate decides, so the config is back
    assert spills in ranking.valid_candidates(st, "float16", (4096, 4096, 4096, False, False, False))


def _estimate_agreement(shipped, align: str | None = None):
    """Per entry of the table (of one alignment class when `align`): does the estimate give the same shared
    bytes, and the same fits/doesn't fit?"""
    same_bytes = same_fit = under = n = 0
    worst = []
    for key, rows in shipped.entries.items():
        if align is not None and key.split("/")[-1] != align:
            continue
        arch, dt = int(key.split("/")[0][2:]), key.split("/")[1]
        es = 2 if dt == "f16" else 4
        for cfg_key, row in rows.items():
            f = dict(zip(F.FIELDS, row, strict=True))
            cfg = TileConfig.from_key(cfg_key)
            est = cfg.smem_bytes(es, arch, tensor_cores=dt != "f32")
            n += 1
            same_bytes += est == f["shared_bytes"]
            same_fit += (est <= LIMIT[arch]) == (f["shared_bytes"] <= LIMIT[arch])
            under += est < f["shared_bytes"]
            worst.append((abs(est - f["shared_bytes"]) / max(f["shared_bytes"], 1), key, cfg_key))
    return n, same_bytes, same_fit, under, sorted(worst)[-5:]


def test_estimate_agrees_with_the_table(shipped):
    n, same_bytes, same_fit, under, worst = _estimate_agreement(shipped)
    assert same_fit == n, f"estimate and compiler disagree on fitting for {n - same_fit} of {n}; worst {worst}"
    assert under == 0, f"the estimate is below the compiler's shared memory for {under} of {n}; worst {worst}"
    # Exact where it was read off (the aligned EVEN_K binary); unaligned classes stage less (narrower vectors,
    # smaller swizzled buffers), which the estimate does not model: there it only bounds them from above.
    n, same_bytes, _, _, worst = _estimate_agreement(shipped, "even")
    assert same_bytes >= 0.95 * n, f"estimate exact on {same_bytes} of {n} aligned entries; worst {worst}"


def test_estimate_mma_family_agrees_with_the_table(shipped):
    wrong = []
    for key, rows in shipped.entries.items():
        arch, dt = int(key.split("/")[0][2:]), key.split("/")[1]
        for cfg_key, row in rows.items():
            got = mma_family(TileConfig.from_key(cfg_key), arch=arch, tensor_cores=dt != "f32")
            if got != row[F.FIELDS.index("mma")]:
                wrong.append((key, cfg_key, got, row))
    assert not wrong, wrong[:5]


def test_check_config_with_facts_replaces_the_estimate():
    cfg = TileConfig(128, 256, 64, num_warps=8, num_stages=4)
    # the all-stages bound says no on an A100, the compiler's 3 stages fit
    assert check_config(cfg, elem_size=2, max_shared_memory=LIMIT[80]) is not None
    f = {"registers": 200, "spill_bytes": 0, "shared_bytes": 147456, "mma": "mma.sync", "sass_instructions": 1}
    assert check_config(cfg, elem_size=2, max_shared_memory=LIMIT[80], facts=f) is None
    assert check_config(cfg, elem_size=2, max_shared_memory=LIMIT[80], arch=80) is None


def test_blocks_per_sm():
    cfg = TileConfig(128, 128, 64, num_warps=4, num_stages=3)
    f = {"registers": 128, "spill_bytes": 0, "shared_bytes": 98304, "mma": "wgmma", "sass_instructions": 1}
    assert F.blocks_per_sm(f, cfg, 90) == 2  # shared memory: 2 x 96 KiB of 228 KiB (registers would allow 4)
    assert F.blocks_per_sm({**f, "registers": 255, "shared_bytes": 0}, cfg, 90) == 2  # 65536 / (256 * 128)


def test_inspect_from_table(shipped, capsys):
    from gpperf_torch.cli.main import main

    key = "sm90/f16/nt/even"
    cfg_key = next(c for c in sorted(shipped.entries[key]) if "_s1_" in c)
    assert main(["inspect", cfg_key, "--gpu", "h200", "--dtype", "bf16", "--b-trans", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {f: info[f] for f in F.FIELDS} == shipped.get(TileConfig.from_key(cfg_key), key)
    assert info["source"] == "table" and info["target"] == "sm_90" and isinstance(info["fits"], bool)
    assert main(["inspect", cfg_key, "--gpu", "a100"]) == 0
    assert "registers" in capsys.readouterr().out


def test_inspect_bad_input_is_one_line(capsys):
    from gpperf_torch.cli.main import main

    assert main(["inspect", "128x64", "--gpu", "h100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a TileConfig key" in err and "\n" not in err
    assert main(["inspect", "64x64x32_g8_s1_w4_st3", "--gpu", "v100"]) == 2
    assert "unknown GPU" in capsys.readouterr().err


def test_inspect_sass_compiles_fresh(capsys):
    from gpperf_torch.cli.main import main

    assert main(["inspect", "64x64x32_g8_s1_w4_st3", "--gpu", "h100", "--n", "4095", "--sass"]) == 0
    out = capsys.readouterr().out
    assert "compiled (triton" in out and "HGMMA" in out and "EXIT" in out


@pytest.mark.cuda
def test_table_matches_the_device_compiler(shipped):
    """On a GPU: the JIT's own compile of a few table entries reports the table's registers and shared memory."""
    from gpperf_torch.kernels.crosscompile import _jit_function

    cap = torch.cuda.get_device_capability()
    arch = cap[0] * 10 + cap[1]
    classes = ("nt/even", "nn/even", "nt/m16n16k8", "nt/m16n8keven", "nn/m16n16k8")  # issue 27's classes too
    keys = [f"sm{arch}/f16/{c}" for c in classes if f"sm{arch}/f16/{c}" in shipped.entries]
    if not keys:
        pytest.skip(f"the table has no sm_{arch} entries")
    fn = _jit_function()
    checked = 0
    for key in keys:
        for cfg_key in sorted(shipped.entries[key])[:: max(1, len(shipped.entries[key]) // 4)][:4]:
            cfg = TileConfig.from_key(cfg_key)
            want = shipped.get(cfg, key)
            if want["shared_bytes"] > torch.cuda.get_device_properties(0).shared_memory_per_block_optin:
                continue
            args, kwargs = launch_args(cfg, job_class(cfg, key))
            args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
            kernel = fn.warmup(*args, grid=(1,), **kwargs)
            kernel._init_handles()
            assert (kernel.n_regs, kernel.metadata.shared) == (want["registers"], want["shared_bytes"]), cfg_key
            checked += 1
    assert checked


def test_launch_check_uses_the_measured_estimate_on_a_gpu():
    # What the selector may pick from facts, launch must accept: on an A100 a 4-stage 128x256x64 fp16 tile keeps
    # 3 stages (144 KiB) in shared memory; IEEE fp32 on an H100 is FMA code with num_stages - 1 stages too.
    def reason(cfg, dtype, limit, arch=None, tf32=False):
        return matmul_mod._plan(cfg, dtype, limit, tf32, arch)[2]

    big = TileConfig(128, 256, 64, num_warps=8, num_stages=4)
    assert reason(big, torch.float16, LIMIT[80]) is not None  # no arch (CPU): the all-stages bound
    assert reason(big, torch.float16, LIMIT[80], 80) is None
    fp32 = TileConfig(128, 128, 64, num_warps=8, num_stages=4)
    assert reason(fp32, torch.float32, LIMIT[90], 90, True) is not None  # TF32: wgmma keeps all 4 stages
    assert reason(fp32, torch.float32, LIMIT[90], 90, False) is None
