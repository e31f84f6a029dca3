"""RL math in plain torch: advantages, losses, log-probs. No hidden state."""
