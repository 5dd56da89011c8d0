"""Evaluation after training: generation metrics on evaluation sets for the tuned model and
its baseline, paired bootstrap comparison, and the gates of ``spec.evaluation``."""
