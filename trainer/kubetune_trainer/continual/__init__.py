"""Continual learning (``spec.continual``): protected tasks' data and replay (``data``), the
EWC / L2-SP penalty and its state (``penalty``), the loop's hooks (``runner``) and the
model card's forgetting table (``card``). See docs/continual-learning.md."""
