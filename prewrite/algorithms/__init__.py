"""RL in plain torch. grpo, ppo, logprobs: the math (advantages, losses, log-probs), no hidden state;
updates: GRPO and PPO as objects (base.Algorithm) that apply it to a rollout and keep what state they need."""
