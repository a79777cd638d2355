"""Choosing per GEMM: the op's selection path.

Owns the memo (`state`), the on-disk prediction cache (`select_cache`), the objectives and modes (`objectives`),
scoring and ranking the model's candidates (`ranking`), the measured dispatch (`verify`: cuBLAS and the top
predicted configs timed on the call's operands) and its per-device table (`table`), measured energy for the
energy objectives (`energy_verify`: NVML windows), the end-to-end guard's comparison (`guard`), `explain`, and
`selector`, the entry point the op calls on every GEMM.

Imports the predictor, the dispatch policy, measurement and the kernels; never the front (ops, nn, warmup), the
command line or training (scikit-learn, skl2onnx): the op's hot path stays light. tests/test_import_cycles.py.
"""
