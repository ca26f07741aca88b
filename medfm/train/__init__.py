"""Training engine: optimiser and schedule, checkpoints and resume, the step loop, pre-training."""
