"""What every mode shares: the training loop, checkpoints, data, distribution, exports, summaries,
command-line start-up and flags, and the trainer contract with its registry of modes."""
