"""The prepared GPU check's steps, by concern (benchmarks/gpu_check.py runs them)."""
