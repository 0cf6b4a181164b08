"""The experiment runner: config, round loop, run directory, checkpoints, outputs."""
