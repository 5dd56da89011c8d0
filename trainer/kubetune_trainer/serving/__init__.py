"""``kubetune serve``: a small OpenAI-compatible completion server on the CPU.

Production serves tuned models with vLLM or KServe; this server exists so the rollout
analysis queries written for vLLM (its metric names, its ``model_name`` label) run
unchanged against real model processes in tests and the local demo. It serves one base
model plus an optional kubetune adapter, one generation at a time, and can inject
latency, errors and degenerate answers on purpose (off by default) to play a bad
candidate.

Modules: ``protocol`` (request validation, response shapes; no torch), ``metrics``
(vLLM-named collectors), ``faults`` (seeded fault injection), ``engine`` (model loading
and generation), ``reward`` (reward-model scoring of sampled responses), ``app`` (the
aiohttp application).
"""
