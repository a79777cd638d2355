"""Measuring and its records: what a kernel costs on a device, and where those numbers are kept.

Owns the timers (`timing`: CUDA events, the wall clock, interleaved rounds), the NVML energy meter (`energy`) and
its repeated, interleaved windows (`energy_windows`), the device descriptors (`device`), the dataset schema
(`dataset`) and its locked, resumable CSV writer (`writer`), which tuning, the measured dispatch and training all
read or write.

Imports only the kernels' config schema and the shared basics; never the predictor, selection, tuning, the front
or the command line.
"""
