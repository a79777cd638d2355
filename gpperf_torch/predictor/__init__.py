"""Learning and scoring: what a GEMM's candidates are predicted to cost.

Owns the one feature function (`features`), the ONNX runtime a model is scored with (`runtime`), the model
schema (`model_meta`), the analytic estimate for GPUs without a learned model (`analytic`), and, offline, the
forests (`fitting`), their export to ONNX + JSON (`export`), metrics on held-out groups (`evaluation`,
`verify_eval`) and the end-to-end pipeline (`train`).

Imports the dispatch policy, measurement records and the kernels; never selection, the front or the command line.
Only `fitting`, `export` and `train` need the `train` extra (scikit-learn, skl2onnx), and nothing on the op's
path imports them.
"""
