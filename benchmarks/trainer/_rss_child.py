"""Child process of memory.py: run the trainer, sample RSS around the training loop.

Prints one JSON line: RSS right before the first step (model, data, optimizer set up)
and the peak RSS while the steps run, sampled every 5 ms from /proc.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import kubetune_trainer.trainer as trainer_module
    from kubetune_trainer.__main__ import main as trainer_main

    record: dict[str, float] = {}
    original = trainer_module.Trainer.train_steps

    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        record["before_training"] = rss_bytes()
        peak = {"value": record["before_training"]}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak["value"] = max(peak["value"], rss_bytes())
                time.sleep(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            return original(self, *args, **kwargs)
        finally:
            done.set()
            thread.join()
            record["peak_during_training"] = max(peak["value"], rss_bytes())

    trainer_module.Trainer.train_steps = traced  # type: ignore[method-assign]
    code = trainer_main([])
    print(json.dumps({"code": code, **record}))
    sys.exit(code)


if __name__ == "__main__":
    main()
