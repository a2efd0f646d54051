"""Training: the QAT trainer, its step, checkpoints, parallelism, trained runs on disk."""
