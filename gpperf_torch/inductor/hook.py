"""The InductorChoices subclass: Inductor's own Triton mm template, its config chosen per GEMM by the predictor.

Inductor 2.13 lowers aten.mm / addmm / bmm by asking `V.choices.get_template_configs(kernel_inputs, templates,
op_name)` for its choices; the list goes to its autotuner, which benchmarks when there is more than one. This
class overrides the one step meant for it, `_finalize_template_configs` (the choices before they become
ChoiceCallers), and keeps, for a CUDA GEMM the policy can rank:
- predict: one choice, row 0 of `policy.plan`: the aten extern (cuBLAS) or one template config;
- verify: the aten extern and the templates in row 0's `verify_candidates` (at most top_k): Inductor's own
  autotuner times them and picks.
The templates are Inductor's own mm (bmm) template with the configs Inductor itself offers for this GEMM (its
template heuristic, listed as under max-autotune): the plan ranks exactly those (`offered=`), so the choice is
always one Inductor could make, and a template fuses the epilogue (bias, activation) as under max-autotune.

Where the templates come from: Inductor lists them only under max-autotune. Without it (plain
`torch.compile`), the hook lists them itself in the call that carries the aten extern, and fixes the output
layout as max-autotune does for templates (`_need_to_fix_layout`). Under max-autotune the templates Inductor
lists are dropped and the hook's own (the same configs) go with the extern, so both paths keep the same set.
EVEN_K (K divisible by BLOCK_K: the kernel then skips the K mask) is recomputed for every kept config from K
and that config's BLOCK_K, never inherited from another entry.

Left to Inductor, untouched: persistent-TMA, Blackwell, decompose-k and contiguous-subgraph choices (the model
was trained on none of them; Inductor offers them only under max-autotune, with the TMA config switch for TMA),
ROCm, out_dtype GEMMs, other ops, other devices, a Triton-only backend list, GPUs without a model (plan
returns None) and any error in the hook (logged once): Inductor's own list, unchanged. With AutoHeuristic on (off
by default) its own pruning of the list runs after the hook, as it does after Inductor's list.
"""

from __future__ import annotations

import functools
import logging

import sympy
import torch
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.kernel_inputs import MMKernelInputs
from torch._inductor.kernel_template_choice import KernelTemplateChoice
from torch._inductor.select_algorithm import ExternKernelChoice
from torch._inductor.template_heuristics.params import DictKernelTemplateParams
from torch._inductor.virtualized import V

from ..once import WarnOnce
from . import settings as _settings
from .gemm import spec_of

logger = logging.getLogger(__name__)
warn_once = WarnOnce(logger)

OPS = ("mm", "addmm", "bmm")
MARK = "gpperf_key"  # KernelTemplateChoice.annotations entry: a template config the hook kept


@functools.cache
def _inductor_kernels() -> dict:
    """Inductor's aten externs and Triton templates per op (imported late: kernel/ imports much of Inductor)."""
    from torch._inductor.kernel import bmm, mm

    return {
        "mm": (mm.aten_mm, mm.mm_template),
        "addmm": (mm.aten_addmm, mm.mm_template),
        "bmm": (bmm.aten_bmm, bmm.bmm_template),
    }


class GpperfChoices(InductorChoices):
    """Inductor's choices, with the GEMM templates chosen by gpperf's policy while the hook is installed."""

    def uuid(self) -> str:  # Inductor's FX graph cache key (config._cache_config_factory_keys)
        return _settings.uuid()

    def _finalize_template_configs(self, template_choices, kernel_inputs, templates, op_name, kwarg_overrides=None):
        base = super()._finalize_template_configs(template_choices, kernel_inputs, templates, op_name, kwarg_overrides)
        settings = _settings.current()
        if settings is None or op_name not in (*OPS, "mm-ah"):
            return base
        try:
            # "mm-ah": tuned_mm's extra call for AutoHeuristic (off by default): its configs are among ours already
            kept = _keep(self, base, kernel_inputs, "mm" if op_name == "mm-ah" else op_name, settings)
        except Exception as e:  # never break a compile: Inductor's own list
            warn_once(f"hook:{type(e).__name__}", "gpperf Inductor hook deferred to Inductor (%s: %s)",
                      type(e).__name__, e)  # fmt: skip
            logger.debug("hook failure", exc_info=True)
            return base
        return base if kept is None else kept

    def _need_to_fix_layout(self, adjusted_choices, op_name) -> bool:
        # A template writes its output with the strides it was generated for: Inductor fixes the layout when a
        # template is among the choices under max-autotune; the hook's templates need the same without it.
        if any(MARK in ktc.annotations for ktc in adjusted_choices):
            return True
        return super()._need_to_fix_layout(adjusted_choices, op_name)


def _keep(choices: GpperfChoices, base: list, kernel_inputs, op_name: str, settings) -> list | None:
    """The choices to keep from this call's `base`, or None to leave it to Inductor."""
    if not isinstance(kernel_inputs, MMKernelInputs) or kernel_inputs.device_type != "cuda" or torch.version.hip:
        return None
    from torch._inductor.utils import use_aten_gemm_kernels

    if not use_aten_gemm_kernels():  # no cuBLAS among the choices to anchor ours: Inductor's list
        return None
    aten, template = _inductor_kernels()[op_name]
    anchor = [c for c in base if c.template is aten]
    plain = [c for c in base if c.template is template]
    if not anchor and not plain:
        return None  # e.g. addmm's contiguous-subgraph call: nothing of ours
    decision = _decide(choices, kernel_inputs, op_name, template, settings)
    if decision is None:
        return None
    keep_torch, ours = decision
    # Inductor's own other choices (TMA, decompose-k, ...) stay: the model cannot rank them.
    others = [c for c in base if not isinstance(c.template, ExternKernelChoice) and c.template is not template]
    if not anchor:
        return others  # under max-autotune, addmm's template call: ours went with the extern
    return ([anchor[0]] if keep_torch else []) + ours + others


def _decide(choices: GpperfChoices, kernel_inputs, op_name: str, template, settings):
    """(keep the aten extern?, the template choices to keep, in the plan's order) or None (defer)."""
    from torch._inductor.utils import use_triton_template

    if not use_triton_template(kernel_inputs.output_layout(), check_max_autotune=False):
        return None  # Inductor would offer no template here (dtype, small GPU, backend list)
    spec = spec_of(kernel_inputs, op_name)
    if spec is None:
        return None
    offered = _offered(choices, kernel_inputs, op_name, template)
    if not offered:
        return None
    rows = _plan(spec, tuple(offered), settings, kernel_inputs.device())
    if not rows:
        return None  # no model for this GPU
    row0 = rows[0]
    # verify: cuBLAS first, then the templates (an objective other than time: the choice alone, since Inductor's
    # autotuner times for speed only)
    keys = [row0["config"]] if settings.mode == "predict" else list(row0.get("verify_candidates") or [row0["config"]])
    keep_torch = "torch" in keys
    wanted = [k for k in keys if k != "torch"]
    if settings.mode == "verify":
        wanted = wanted[: settings.top_k]
    missing = [k for k in wanted if k not in offered]
    if missing:
        warn_once(f"missing:{missing[0]}", "gpperf plan chose %s, not offered by Inductor here: deferring", missing)
        return None
    logger.debug("gpperf %s %s: %s", op_name, spec, keys)
    return keep_torch, [offered[k] for k in wanted]


def _plan(spec, offered: tuple[str, ...], settings, device: torch.device):
    from .policy import plan

    where = {"device": device}
    if not torch.cuda.is_available():  # a lowering for a GPU this process does not drive (tests, cross-compile)
        from torch._dynamo.device_interface import get_interface_for_device

        from ..measure.device import short_name_of

        where = {"gpu": short_name_of(get_interface_for_device(device).get_device_properties(device).name)}
    return plan(spec, mode=settings.mode, top_k=settings.top_k, offered=list(offered), **where)


def _template_inputs(kernel_inputs, op_name: str):
    """The inputs Inductor's template takes: for addmm the bias expanded to the output's shape (the call that
    carries the aten extern has it unexpanded, as cuBLAS takes it)."""
    if op_name != "addmm":
        return kernel_inputs
    from torch._inductor.ir import ExpandView, TensorBox

    inp, mat1, mat2 = kernel_inputs.nodes()
    size = list(kernel_inputs.output_layout().size)
    if list(inp.get_size()) != size:  # as mm_args expands it for the template (a view: stride 0 along M)
        inp = TensorBox(ExpandView.create(inp, size))
    scalars = {s: kernel_inputs.get_scalar(s) for s in ("alpha", "beta")}
    return MMKernelInputs([inp, mat1, mat2], scalars=scalars)


def _offered(choices: GpperfChoices, kernel_inputs, op_name: str, template) -> dict:
    """Inductor's own template configs for this GEMM, by gpperf key, each with EVEN_K recomputed."""
    from .policy import template_key

    inputs = _template_inputs(kernel_inputs, op_name)
    # Inductor's template heuristics yield configs only under max-autotune; the hook lists them for every GEMM it
    # ranks (the list is materialised inside the patch: the generators are lazy). A plain mm also gets
    # AutoHeuristic's extra configs ("mm-ah"), which tuned_mm offers when AutoHeuristic runs and which the public
    # data were collected with: offered_keys (policy.py) lists the same, so the hook and explain rank one set.
    with inductor_config.patch(max_autotune_gemm=True):
        listed = list(choices.get_ktc(inputs, template, op_name, {}))
        if op_name == "mm":
            listed += list(choices.get_ktc(inputs, template, "mm-ah", {}))
    _, _, k = inputs.mnk_symbolic()
    out: dict = {}
    for ktc in listed:
        kw = dict(ktc.params.to_kwargs())
        if kw.get("hint_override") is not None:  # multi-kernel hint variants: not configs of their own
            continue
        key = template_key(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw.get("GROUP_M", 8), kw["num_stages"],
                           kw["num_warps"])  # fmt: skip
        if key in out:
            continue
        kw["EVEN_K"] = bool(V.graph.sizevars.statically_known_true(sympy.Eq(sympy.Mod(k, kw["BLOCK_K"]), 0)))
        kept = KernelTemplateChoice(template, DictKernelTemplateParams(kw), ktc.extra_kwargs, ktc.layout, ktc.inputs)
        kept.annotations[MARK] = key
        out[key] = kept
    return out


__all__ = ["MARK", "OPS", "GpperfChoices"]
