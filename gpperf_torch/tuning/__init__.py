"""Offline sweeps, locally or on a Ray cluster: measure (shape, config) pairs into a resumable dataset.

Owns the run (`tune`), its plan (`plan`: problems, sampling, order, resume), the shapes and presets
(`shapes`), the executors (`local`, `ray_exec`: the driver the only writer), compilation ahead of measuring
(`precompile`), the inputs rotated through (`inputs`), progress and the GPU-or-interpreter set-up (`runtime`).

Imports measurement and the kernels; never selection, the op's caches, the predictor or the command line.
"""
