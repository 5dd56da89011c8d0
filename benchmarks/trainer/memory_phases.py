"""Where kubetune's training-loop memory goes: RSS by phase and step, and glibc's share.

Runs one variant of ``throughput.py`` (same model, data and batches) in this process with
one torch thread and records, relative to the RSS once the libraries are imported and the
data and model files exist (before the model load, as throughput.py):

- the peak RSS within each phase (forward, backward, clipping, optimizer step, between
  steps), sampled every 5 ms;
- the RSS at the end of each step (growth from step to step is memory kept, not a
  transient);
- after the last step, glibc's heap: bytes in use, bytes free but kept, and the RSS once
  ``malloc_trim(0)`` returned the free pages (measured after the loop; nothing trims during
  it, and the benchmark never does).

    python benchmarks/trainer/memory_phases.py [--steps 16]   # both variants -> results/
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
from typing import Any

import throughput
from common import CACHE, save_results

MiB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class PhaseMeter:
    """Peak RSS per phase of the engine's calls, and the RSS after every optimizer step."""

    def __init__(self) -> None:
        self.base = throughput._rss()
        self.phase = "setup"
        self.peaks: dict[str, int] = {}
        self.after_step: list[int] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._note(self.phase)

    def _note(self, phase: str) -> int:
        rss = throughput._rss() - self.base
        self.peaks[phase] = max(self.peaks.get(phase, 0), rss)
        return rss

    def wrap(self, cls: Any, name: str) -> None:
        original = getattr(cls, name)

        def measured(engine: Any, *a: Any, **k: Any) -> Any:
            self.phase = name
            try:
                return original(engine, *a, **k)
            finally:
                rss = self._note(name)
                self.phase = "between steps"
                if name == "optimizer_step":
                    self.after_step.append(rss)

        setattr(cls, name, measured)

    def stop(self) -> None:
        self._stop.set()


def glibc_heap(base: int) -> dict[str, float]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    before = throughput._rss() - base
    libc.malloc_trim(0)
    return {
        "heap_in_use_mib": info.uordblks / MiB,
        "heap_free_kept_mib": info.fordblks / MiB,
        "rss_mib": before / MiB,
        "rss_after_malloc_trim_mib": (throughput._rss() - base) / MiB,
    }


VARIANTS = ("kubetune", "kubetune-unrounded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=VARIANTS, help="one run, in this process")
    parser.add_argument("--distribution", choices=list(throughput.DISTRIBUTIONS), default="uniform")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    if args.variant is None:  # each variant in a fresh process
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        runs = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", variant]
            cmd += ["--distribution", args.distribution, "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            runs[variant] = json.loads(proc.stdout[proc.stdout.index("{") :])
            print(json.dumps(runs[variant]), flush=True)
        print(save_results("memory_phases", {"steps": args.steps, "runs": runs}))
        return
    import torch

    torch.set_num_threads(1)
    # the libraries imported before the baseline, as in throughput.py's children
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    import kubetune_trainer.run
    import kubetune_trainer.trainer  # noqa: F401
    from kubetune_trainer.distributed.strategy import LocalEngine

    root = CACHE / "throughput"
    model, data, _ = throughput.setup(root, args.distribution, args.vocab)
    work = root / f"work-phases-{os.getpid()}"
    meter = PhaseMeter()
    for name in ("forward", "backward", "clip_gradients", "optimizer_step"):
        meter.wrap(LocalEngine, name)
    box: dict[str, Any] = {}

    def last_step(engine: Any, *a: Any, **k: Any) -> Any:  # glibc's heap at the last step
        out = step(engine, *a, **k)
        if len(meter.after_step) == args.steps:
            box["heap"] = glibc_heap(meter.base)
        return out

    step = LocalEngine.optimizer_step
    LocalEngine.optimizer_step = last_step  # type: ignore[method-assign,assignment]
    try:
        result = throughput.child_ours(args.variant, model, data, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meter.stop()
    report = {
        "variant": args.variant,
        "distribution": args.distribution,
        "tokens_per_cpu_second": round(result["tokens_per_cpu_second"]),
        "peak_by_phase_mib": {k: round(v / MiB) for k, v in meter.peaks.items()},
        "rss_after_each_step_mib": [round(v / MiB) for v in meter.after_step],
        "glibc_after_last_step": {k: round(v) for k, v in box.get("heap", {}).items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
