"""gpperf-torch: per-shape tile selection for Triton matmul."""
