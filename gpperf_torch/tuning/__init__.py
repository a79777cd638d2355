"""The parts of a tuning run (`gpperf_torch.tune` puts them together): plan, writer, executors, progress, CLI."""
