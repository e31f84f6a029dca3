"""Rewriter generation: sample rewrites of an instruction from the policy."""
