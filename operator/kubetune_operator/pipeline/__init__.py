"""The FineTunePipeline controller: a pure planner (plan.py) and its runtime (runtime.py)."""
