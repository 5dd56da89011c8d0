"""Feedback to training data: ``kubetune feedback build`` (docs/feedback-loop.md).

``builder`` reads the feedback logs ``kubetune serve --feedback-log`` writes and human
review files (JSONL or CSV), applies the personal-data policy to every text, deduplicates,
resolves conflicting labels, and writes ``preference.jsonl`` (DPO, ORPO, reward) and
``unpaired.jsonl`` (KTO) with a report of counts. Pure Python: no torch.
"""
