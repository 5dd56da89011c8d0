"""Differential privacy (``spec.differentialPrivacy``): DP-SGD and its privacy budget."""
