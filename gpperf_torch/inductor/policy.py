"""The compile path's policy: which of the mm template configs Inductor offers for a GEMM the model keeps, and
which one it puts first.

One policy with the op's: the same model, the same dispatch rule (policy/dispatch.py `decide`: the confident-gain
rule with the model's calibrated z, the unaligned floor, the K guard, the tie-break by padded work) and the same
measured-dispatch candidates (policy/verify_policy.py `candidates`: cuBLAS first, then at most top_k templates
predicted within 10% of the fastest, none where the model is confident they are all much slower), with the
compile path's costs (costs.py: no host cost per call; the extern pays the epilogue the template fuses).

- `predict`: the first row is the one choice (a template config or the aten extern, "torch"): nothing is timed.
- `verify`: `verify_candidates` (the extern, always, then the templates above) go to Inductor's own autotuner,
  which times them and keeps the fastest.

The candidates are the template configs Inductor offers for the GEMM (`offered_keys`, templates.py), scored by
the model. A config the model has never seen (not among its candidates, model.json `candidates`: the configs
measured in at least 3 of its training groups, the op's own bar) is left out, not scored: the forests split on
the config's fields, so a config outside the training configs gets the leaves of its nearest neighbours, no
evidence about itself (a 256-wide tile, which torch 2.13 offers and the public data never timed, would be scored
like the widest tile the data has). Measured on configs hidden from training (benchmarks/unseen_configs.py,
docs/inductor.md): their prediction error was 2.3x that of seen configs, and scoring them gained nothing in
predict mode, where nothing checks the guess. A config that does not fit the device's shared memory or registers
(kernels.check_config, the estimate measured against the compiler for our kernel, whose main loop is the
template's) is left out too: Inductor would fail to compile it.

Row keys are `gpperf_torch.explain`'s (selection/explain.py): rank, backend ("torch" | "triton"), config ("torch"
or a key such as "128x128x64_g8_s1_w4_st3"; split-K is always 1: the template has none), the predicted targets,
time_sd_log, host_ms (0 here), model, objective, device; plus epilogue_ms (what the row's backend pays for the
epilogue on top of its kernel). The first row adds why, the Triton pick it was weighed against and its predicted
gain, the policy, mode, verify_candidates, verify_policy, and left_out ({key: why} for offered configs not scored).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import kernels
from ..errors import ModelError, UserError
from ..kernels import TileConfig, check_config, elem_size
from ..kernels.configs import mma_family
from ..measure.device import DeviceInfo, device_for
from ..policy import verify_policy
from ..policy.dispatch import Decision, Policy, decide, k_ratio, padded_work, unaligned_transposed
from ..predictor.features import config_matrix
from ..selection.objectives import current_objective, parse_objective
from ..selection.ranking import TORCH, Scored, objective_for, ranked_rows
from ..selection.state import default_device, state, state_for_info
from . import templates
from .costs import check_epilogue, compile_policy, unfused_epilogue_ms

logger = logging.getLogger(__name__)

DTYPES = ("float16", "bfloat16", "float32")
MODES = ("predict", "verify")
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}


@dataclass(frozen=True)
class GemmSpec:
    """One GEMM as the compile path sees it: C[m, n] = A[m, k] @ B[k, n] (per batch), in `dtype`.

    a_trans / b_trans: the operand is a transposed view (its stride along k, resp. n, is not 1), as in the op's
    selection key. batch: the bmm batch (1 for mm/addmm). epilogue: what the template would fuse after the
    product: None (a plain mm), "bias" (addmm: cuBLAS fuses it too), "act" (an activation such as ReLU or GELU
    after mm) or "bias_act" (both: addmm + activation); costs.py says what each costs the extern.
    """

    m: int
    n: int
    k: int
    dtype: str
    a_trans: bool = False
    b_trans: bool = False
    batch: int = 1
    epilogue: str | None = None

    def __post_init__(self) -> None:
        for name in ("m", "n", "k", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise UserError(f"GemmSpec.{name} must be a positive int, got {v!r}")
        dtype = str(self.dtype).replace("torch.", "")
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise UserError(f"GemmSpec.dtype must be one of {DTYPES} (fp16, bf16, fp32), got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        check_epilogue(self.epilogue)


def template_key(block_m: int, block_n: int, block_k: int, group_m: int, num_stages: int, num_warps: int) -> str:
    """Our key for one config of Inductor's mm template, e.g. "128x128x64_g8_s1_w4_st3" (split-K s1: the
    template has none): the key the public data and the models use (TileConfig.key)."""
    return TileConfig(block_m, block_n, block_k, group_m, 1, num_warps, num_stages).key


def offered_keys(spec: GemmSpec) -> list[str] | None:
    """The keys of the mm template configs Inductor offers for `spec`, in Inductor's order (templates.py):
    max-autotune's DEFAULT search space of the mm (addmm for a bias epilogue, bmm for batch > 1) template, and for
    a plain mm also AutoHeuristic's extra list ("mm-ah"), which tuned_mm offers with it when AutoHeuristic runs
    (the public data were collected so). Without max-autotune Inductor offers the extern alone. None when this
    torch's Inductor internals differ from the tested ones (the compile path then defers to Inductor)."""
    cfgs = templates.mm_configs(spec.m, spec.n, spec.k, dtype_size=elem_size(spec.dtype), batched=spec.batch > 1,
                                bias=spec.epilogue in ("bias", "bias_act"))  # fmt: skip
    if cfgs is None:
        return None
    return list(dict.fromkeys(template_key(*c) for c in cfgs))


# ---- the policy on predictions (shared with replay.py) ---------------------------------------------------------
def screen(keys, seen, info: DeviceInfo, dtype: str, tf32: bool) -> tuple[list[TileConfig], dict[str, str]]:
    """(configs to score, {key: why left out}) of offered template keys: a config is scored when the model has
    seen it (`seen`: the model's candidate keys, in the model's order) and it fits the device (module docstring).
    "torch" in `keys` is ignored: the extern is always a candidate. The configs come in the model's candidate
    order, as the op scores them, so that exact ties (tiny shapes at the model's time floor, equal padded work)
    fall the same way whatever order Inductor lists them in."""
    rank = {key: i for i, key in enumerate(seen)}
    es = elem_size(dtype)
    arch = info.capability[0] * 10 + info.capability[1]
    tensor_cores = dtype != "float32" or bool(tf32)
    kept: list[TileConfig] = []
    left: dict[str, str] = {}
    for key in dict.fromkeys(keys):
        if key == TORCH:
            continue
        cfg = TileConfig.from_key(key)
        if cfg.split_k != 1:
            left[key] = "split-K: Inductor's mm template has none"
        elif key not in rank:
            left[key] = "never seen by the model (not among its candidates): no evidence to score it on"
        else:
            why = check_config(cfg, elem_size=es, max_shared_memory=info.max_shared_memory, arch=arch,
                               tensor_cores=tensor_cores)  # fmt: skip
            if why is None:
                kept.append(cfg)
            else:
                left[key] = f"does not fit {info.short_name} ({mma_family(cfg, arch=arch, tensor_cores=tensor_cores)}"
                left[key] += f"): {why}"
    kept.sort(key=lambda c: rank[c.key])
    return kept, left


def compile_decision(
    time_ms: np.ndarray, is_torch: np.ndarray, log_dev: np.ndarray | None, cfg_matrix: np.ndarray, *, m: int, n: int,
    k: int, a_trans: bool, b_trans: bool, policy: Policy, vpolicy: verify_policy.VerifyPolicy,
    k_ratio_max: float | None,
) -> tuple[Decision, list[int]]:  # fmt: skip
    """(dispatch.decide's decision, the indices verify times: the extern first) for one GEMM's candidates under
    the compile path's policy (costs.compile_policy). m is the scored rows (batch x M for a bmm), as the op scores
    it. The candidates' predicted times enter verify_policy.candidates with each backend's additive cost (the
    extern's unfused epilogue), so that a template is not skipped for a gain its fusion makes up."""
    t = np.asarray(time_ms, dtype=np.float64)
    is_torch = np.asarray(is_torch, dtype=bool)
    d = decide(t, is_torch, policy, log_dev=log_dev, work=padded_work(m, n, k, cfg_matrix),
               unaligned=bool(unaligned_transposed(m, n, k, a_trans, b_trans)), k_ratio=float(k_ratio(m, n, k)),
               k_ratio_max=k_ratio_max)  # fmt: skip
    extra = np.where(is_torch, policy.host_ms.get("torch", 0.0), policy.host_ms.get("triton", 0.0))
    idx = verify_policy.candidates(t + extra, is_torch, vpolicy, log_dev=log_dev)
    torch_idx = [int(i) for i in np.flatnonzero(is_torch)][:1]
    if torch_idx and torch_idx[0] not in idx:
        idx.insert(0, torch_idx[0])
    return d, idx


# ---- plan -------------------------------------------------------------------------------------------------------
def _state(gpu: str | None, device):
    if gpu is not None:
        return state_for_info(device_for(gpu=gpu))
    return state(torch.device(device) if device is not None else default_device())


def plan(
    spec: GemmSpec, *, mode: str = "predict", top_k: int = verify_policy.DEFAULT_TOP_K,
    offered: list[str] | None = None, objective=None, gpu: str | None = None, device=None,
) -> list[dict] | None:  # fmt: skip
    """The ranked candidates of `spec` on the compile path, the choice first (module docstring for the keys).

    mode: "predict" | "verify" (recorded in the first row; the ranking is the same: the hook keeps the first row
    in predict mode, `verify_candidates` in verify mode). top_k: at most that many templates among
    verify_candidates. offered: the template keys Inductor offers (None: offered_keys(spec)). objective: as the
    op's (None: the current one); an energy objective with a time-only model takes the time pick, as the op's
    (selection.ranking.objective_for); another objective other than time orders by its own rule, and
    verify_candidates is then the choice alone (Inductor's autotuner measures time only). gpu / device: as
    explain's.

    None where the compile path defers to Inductor unchanged: no model for the GPU (the analytic rule is not
    used here), or Inductor's offered configs cannot be read on this torch. UserError (a ValueError and a
    RuntimeError) for bad arguments or an objective the model cannot serve (power_cap without predicted power).
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UserError(f"top_k must be an int >= 0, got {top_k!r}")
    st = _state(gpu, device)
    if st.model is None:
        return None
    if offered is None:
        offered = offered_keys(spec)
        if offered is None:
            return None
    asked = parse_objective(objective or current_objective())
    obj, fallback = objective_for(asked, st)  # energy objectives with a time-only model: the time pick, as the op
    missing = [t for t in obj.needs if t not in st.model.targets]
    if missing:
        raise UserError(
            f"objective {obj} needs predicted {', '.join(missing)}, but the model for {st.info.name} predicts only"
            f" {', '.join(st.model.targets)}: use objective='time'"
        )
    tf32 = spec.dtype == "float32" and bool(kernels.tf32_allowed())
    kept, left_out = screen(offered, st.model.candidate_keys, st.info, spec.dtype, tf32)
    cands: list[TileConfig | None] = [*kept, None]
    matrix = config_matrix(cands)
    rows_m = spec.m * spec.batch  # a bmm is scored as one GEMM of batch x M rows, as the op scores it
    preds, dev = st.model.predict_trees(rows_m, spec.n, spec.k, spec.dtype, spec.a_trans, spec.b_trans, tf32=tf32,
                                        cfgs=matrix, device=st.info)  # fmt: skip
    extra = unfused_epilogue_ms(spec.m, spec.n, spec.batch, spec.dtype, spec.epilogue, st.info,
                                st.model.meta.get("time_floor_ms"))  # fmt: skip
    policy = compile_policy(Policy.from_meta(st.model.meta), extra)
    is_torch = np.array([c is None for c in cands])
    epilogue_ms = np.where(is_torch, extra, 0.0)
    decision, verify_idx, vp = None, None, None
    if obj.name == "time":
        vp = verify_policy.default_policy(top_k)
        decision, verify_idx = compile_decision(
            preds["time_ms"], is_torch, dev, matrix, m=rows_m, n=spec.n, k=spec.k, a_trans=spec.a_trans,
            b_trans=spec.b_trans, policy=policy, vpolicy=vp, k_ratio_max=st.model.meta.get("k_ratio_max"),
        )  # fmt: skip
    ranked = ranked_rows(Scored(cands, preds, dev, epilogue_ms, is_torch, decision), obj, st.info)
    out = []
    for i, (cfg, pred) in enumerate(ranked):
        row = {
            "rank": i + 1,
            "backend": TORCH if cfg is None else "triton",
            "config": TORCH if cfg is None else cfg.key,
            **pred,
            "model": str(st.model.path),
            "objective": str(asked),
            "device": st.info.name,
        }
        row["epilogue_ms"] = row.pop("host_ms")  # ranked_rows carries the additive cost under the op's name
        row["host_ms"] = 0.0
        out.append(row)
    first = out[0]
    if decision is not None:
        # decide's wording names the op's costs; here they are the compile path's (costs.py)
        first["why"] = decision.reason.replace("host cost included", "compile-path costs included")
        if decision.torch_index is not None and decision.triton_index is not None:
            first.update(triton_pick=cands[decision.triton_index].key, predicted_gain_vs_torch=math.exp(decision.gain),
                         gain_sd_log=decision.gain_sd)  # fmt: skip
        if decision.guard:
            first["guard"] = decision.guard
        first["verify_candidates"] = [TORCH if cands[i] is None else cands[i].key for i in verify_idx]
        first["verify_policy"] = vp.as_dict()
    else:
        first["why"] = f"best predicted {obj} (Inductor's autotuner measures time only: nothing is benchmarked)"
        first["verify_candidates"] = [first["config"]]
    if fallback:  # an energy objective answered with the time pick: say so, and why (as explain does)
        first["why"] = f"the time pick (objective {asked}, no predicted energy): {first['why']}"
        first["objective_note"] = fallback
    first["policy"] = {**policy.as_dict(), "host_source": policy.host_source}
    first["mode"] = mode
    first["epilogue"] = spec.epilogue
    first["left_out"] = left_out
    return out


def explain(
    m: int, n: int, k: int, *, dtype: str | torch.dtype = "float16", a_trans: bool = False, b_trans: bool = False,
    batch: int = 1, epilogue: str | None = None, mode: str = "predict", top_k: int = verify_policy.DEFAULT_TOP_K,
    objective: str | None = None, gpu: str | None = None, device=None,
) -> list[dict]:  # fmt: skip
    """`gpperf_torch.explain(..., backend="inductor")`: plan()'s rows for one GEMM, or ModelError saying why the
    compile path would defer to Inductor (no model for the GPU, or Inductor internals this version cannot read)."""
    spec = GemmSpec(m, n, k, str(dtype), a_trans=bool(a_trans), b_trans=bool(b_trans), batch=batch,
                    epilogue=epilogue)  # fmt: skip
    rows = plan(spec, mode=mode, top_k=top_k, objective=objective, gpu=gpu, device=device)
    if rows is None:
        st = _state(gpu, device)
        if st.model is None:
            why = f"there is no model for {st.info.name}"
        else:
            why = f"this torch ({torch.__version__}) has Inductor internals gpperf cannot read (tested on torch"
            why += f" {templates.TESTED_TORCH})"
        raise ModelError(f"the compile path defers to Inductor unchanged here: {why}")
    return rows


__all__ = ["GemmSpec", "compile_decision", "explain", "offered_keys", "plan", "screen", "template_key"]
