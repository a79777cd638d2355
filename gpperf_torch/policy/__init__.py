"""The dispatch policy: pure rules that turn predictions and measurements into a choice.

Owns `dispatch` (Triton or cuBLAS from a prediction: the confidence z, the unaligned floor, the K guard, the host
cost per call), `verify_policy` (which candidates the measured dispatch times, its M buckets, when a measured gain
is beyond noise) and `energy_policy` (the energy objectives' candidates and keep rule: a frugal choice over the
fastest only beyond the paired noise). One policy for the op, `explain`, `eval` and the compile path, so that what
eval measures is what users get: selection and the predictor's evaluation both import it, so it sits below both.

Imports only the shared basics (env, paths); no torch, no model, nothing else of the package.
"""
