"""Child of check_estimates.py: run the real trainer once, report its training working set.

Prints one JSON line: RSS right before the model is loaded (torch, the data and the
tokenizer already in memory) and the peak RSS while the optimizer steps run. The peak
is the kernel's high-water mark (VmHWM), reset through /proc/self/clear_refs when the
steps start, so the model load's transient copies (safetensors pages) do not count.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    # Import what the methods import lazily now, so the baseline holds the code of every
    # method alike and the difference is data, not modules.
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import kubetune_trainer.trainer as trainer_module
    from kubetune_trainer.__main__ import main as trainer_main

    record: dict[str, int] = {}
    original_dtype = trainer_module.load_dtype
    original_steps = trainer_module.Trainer.train_steps

    def load_dtype(*args: Any, **kwargs: Any) -> Any:  # called right before the model loads
        record["before_model"] = _status("VmRSS")
        return original_dtype(*args, **kwargs)

    def train_steps(self: Any, *args: Any, **kwargs: Any) -> Any:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        record["before_steps"] = _status("VmRSS")
        try:
            return original_steps(self, *args, **kwargs)
        finally:
            record["peak_during_steps"] = _status("VmHWM")

    trainer_module.load_dtype = load_dtype  # type: ignore[assignment]
    trainer_module.Trainer.train_steps = train_steps  # type: ignore[method-assign]
    code = trainer_main([])
    print(json.dumps({"code": code, **record}))
    sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
