"""Rewards: metrics on the task LLM's answers, combined into one reward per rewrite."""

from prewrite.rewards.scorer import RewriteScorer, Scores, resolve_reward_func

__all__ = ["RewriteScorer", "Scores", "resolve_reward_func"]
