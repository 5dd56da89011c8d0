"""Statistics for evaluation gates and rollout analysis, in pure Python (no numpy: the
operator image has none)."""
