"""The mm template configs Inductor offers for one GEMM, read from Inductor itself (torch._inductor internals).

Inductor (torch 2.13) builds the list in its template heuristics (torch/_inductor/template_heuristics/triton.py,
`CUDAMMTemplateConfigHeuristic` and the addmm/bmm variants, found through `registry.get_template_heuristic`): a
fixed list of (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) with GROUP_M = 8, each block clamped to the next
power of two of its dimension (at least 16), num_warps capped at BLOCK_M * BLOCK_N / 256, duplicates dropped
(`preprocess_mm_configs`). That is the DEFAULT search space of max-autotune (`max_autotune_gemm_search_space`;
EXHAUSTIVE is honoured too, through the same generator). Without max-autotune Inductor offers no template at all
(the aten extern alone), so this list is what the compile path chooses among.

The generator reads the dimensions' hints through `V.graph.sizevars`; outside a lowering a stand-in graph handler
answers with the given integers. Tested on torch 2.13 (tests/test_inductor_policy.py compares with Inductor's own
generator on a grid of shapes); on a torch whose internals differ, `mm_configs` returns None and says why once.
"""

from __future__ import annotations

import logging

from ..once import WarnOnce

logger = logging.getLogger(__name__)
_warn_once = WarnOnce(logger)
_warned = _warn_once.seen  # tests clear it

TESTED_TORCH = "2.13"  # the torch minor version whose internals this module was written and tested against


class _Hints:
    """V.graph.sizevars as the config generator uses it: a dimension's hint is the integer itself."""

    @staticmethod
    def optimization_hint_with_override(expr, hint_override=None) -> int:
        return int(expr)


class _Graph:
    sizevars = _Hints()


def _op_names(batched: bool, bias: bool) -> list[tuple[str, str]]:
    """[(template, op_name)] under which Inductor registers the heuristics whose configs it offers for this GEMM:
    a plain mm adds AutoHeuristic's extra configs ("mm-ah"), which tuned_mm offers beside the others when
    AutoHeuristic runs for mm (and with which the public data were collected); addmm and bmm have no such list."""
    if batched:
        return [("bmm", "baddbmm" if bias else "bmm")]
    return [("mm", "addmm")] if bias else [("mm", "mm"), ("mm", "mm-ah")]


def mm_configs(m: int, n: int, k: int, *, dtype_size: int, batched: bool = False, bias: bool = False):
    """[(block_m, block_n, block_k, group_m, num_stages, num_warps)] that Inductor's mm (bmm, addmm) template
    offers for an (m, k) x (k, n) GEMM of `dtype_size`-byte elements, in Inductor's order; None when this torch's
    internals differ from the tested ones (logged once)."""
    try:
        from torch._inductor.kernel.bmm import bmm_template
        from torch._inductor.kernel.mm import mm_template
        from torch._inductor.template_heuristics.registry import get_template_heuristic
        from torch._inductor.virtualized import V

        configs = []
        for template, op_name in _op_names(batched, bias):
            uid = (bmm_template if template == "bmm" else mm_template).uid
            generate = get_template_heuristic(uid, "cuda", op_name)._get_config_generator()
            with V.set_graph_handler(_Graph()):
                configs += generate(int(m), int(n), int(k), dtype_size=int(dtype_size), op_name=op_name)
        out = []
        for c in configs:
            kw = c.kwargs
            out.append((int(kw["BLOCK_M"]), int(kw["BLOCK_N"]), int(kw["BLOCK_K"]), int(kw.get("GROUP_M", 8)),
                        int(c.num_stages), int(c.num_warps)))  # fmt: skip
        return out
    except (ImportError, AttributeError, KeyError, TypeError, ValueError) as e:
        import torch

        _warn_once(
            "internals",
            "gpperf: cannot read Inductor's mm template configs on torch %s (%s: %s); gpperf_torch.inductor was "
            "tested on torch %s: the compile path defers to Inductor unchanged",
            torch.__version__, type(e).__name__, e, TESTED_TORCH,
        )  # fmt: skip
        return None


__all__ = ["TESTED_TORCH", "mm_configs"]
