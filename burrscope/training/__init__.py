"""Training: a fold's data, the shared loop, the fine-tuning strategies and resumable checkpoints."""
