"""The maths of reinforcement learning from feedback (PPO, GRPO, RLOO), kept pure.

Losses, advantage estimators and verifiable rewards take torch tensors and masks and
return tensors or small dataclasses; the methods in ``kubetune_trainer.methods`` own the
rollouts, models and training loop and call these functions.
"""
