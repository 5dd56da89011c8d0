"""Mixture-of-experts fine-tuning (``spec.moe``): layout discovery, MoE-aware LoRA targets,
router freezing, expert-selective training, the load-balancing loss and expert-load metrics.

``training.MoeTraining`` is what the loop holds; the other modules each do one job.
"""
