"""Runtime: torch.distributed executor of plans (LLaMA-family engine, reallocation, RL losses)."""
