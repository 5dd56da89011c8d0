"""Check ``kubetune plan``'s memory estimate against the real trainer on the CPU.

For each method, a fresh process runs the trainer (``python -m kubetune_trainer``, fp32
on the CPU, one torch thread) on a ~25M-parameter Llama-style model for 2 optimizer
steps of 2 micro-batches each, every sample truncated to exactly ``maxSeqLength``
tokens (text rows longer than that), so a micro-batch holds ``4 x 256`` tokens that all
have a loss. Measured: the training working set, peak RSS during the steps (the
kernel's high-water mark) minus RSS right before the model was loaded, twice:

* ``live``: with ``MALLOC_MMAP_THRESHOLD_=131072`` every tensor above 128 KiB is its own
  mapping, returned to the kernel when freed, so RSS follows the live tensors -- the
  CPU's counterpart of ``torch.cuda.max_memory_allocated`` (what the estimate models);
* ``default``: glibc's default, which keeps freed blocks for reuse -- closer to what a
  caching allocator reserves (``max_memory_reserved``), fragmentation included.

Estimated: ``kubetune.plan.estimate_memory`` for the same resolved job with precision
fp32 (what ``auto`` resolves to on the CPU).

    python benchmarks/plan/check_estimates.py            # writes results/check.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trainer"))
from common import CACHE, manifest  # noqa: E402

MODEL_SPEC: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
SEQ, MICRO, GLOBAL = 256, 4, 8
CASES: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "full, checkpointing": {"method": "full", "hyper": {"gradientCheckpointing": True}},
    "lora": {"method": "lora", "peft": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05}}},
    "adapter": {"method": "adapter", "peft": {"adapter": {"bottleneckSize": 64}}},
    "prefix": {"method": "prefix", "peft": {"prefix": {"numVirtualTokens": 20}}},
    "prompt": {"method": "prompt", "peft": {"prompt": {"numVirtualTokens": 20}}},
}
MIB = 2**20
TARGET = 0.20


def setup(root: Path) -> tuple[Path, Path]:
    from kubetune_trainer.assets.sample_data import corpus_from_rows, text_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    short = text_rows(512, seed=11, max_items=40)
    # rows of 8 joined texts, all longer than maxSeqLength: every sample is truncated to it
    rows = [{"text": " ".join(r["text"] for r in short[i : i + 8])} for i in range(0, 512, 8)]
    data = write_jsonl(rows, root / "long-text.jsonl")
    corpus = default_corpus() + corpus_from_rows(text_rows(200, seed=3))
    model = ensure_tiny_model(root / "model-25m", TinyModelSpec(seed=5, **MODEL_SPEC), corpus)
    return model, data


def document(case: str, model: Path, data: Path, out: Path) -> dict[str, Any]:
    spec = dict(CASES[case])
    method = spec.pop("method")
    hyper = {
        "maxSteps": 2,
        "globalBatchSize": GLOBAL,
        "microBatchSize": MICRO,
        **spec.pop("hyper", {}),
    }
    return manifest(
        method, model, data, out, fmt="text", hyper=hyper, dataset={"maxSeqLength": SEQ}, **spec
    )


def measure(doc: dict[str, Any], work: Path, *, live: bool) -> dict[str, int]:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    out = Path(doc["spec"]["output"]["uri"])
    shutil.rmtree(out, ignore_errors=True)
    config = work / "job.json"
    resolved = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    config.write_text(resolved.model_dump_json(by_alias=True))
    env = dict(os.environ)
    env.update(
        {
            "KUBETUNE_CONFIG": str(config),
            "KUBETUNE_OUTPUT_DIR": str(out),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_TERMINATION_LOG": str(work / "termination-log"),
            "OMP_NUM_THREADS": "1",
        }
    )
    if live:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "_child.py")], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate(doc: dict[str, Any], model: Path) -> Any:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune.plan import ModelShape, estimate_memory, setup_from_job

    job = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    setup = replace(setup_from_job(job), precision="fp32", device="cpu")  # auto on the CPU
    return estimate_memory(ModelShape.from_file(model), setup)


def main() -> None:
    root = CACHE / "plan"
    root.mkdir(parents=True, exist_ok=True)
    model, data = setup(root)
    results: dict[str, Any] = {}
    for case in sys.argv[1:] or list(CASES):
        work = root / ("work-" + case.replace(", ", "-").replace(" ", "-"))
        work.mkdir(parents=True, exist_ok=True)
        doc = document(case, model, data, work / "out")
        est = estimate(doc, model)
        row: dict[str, Any] = {
            "estimate_bytes": est.peak_bytes,
            "parts": {p.name: p.bytes for p in est.parts},
        }
        for mode in ("live", "default"):
            got = measure(doc, work, live=mode == "live")
            measured = got["peak_during_steps"] - got["before_model"]
            error = est.peak_bytes / measured - 1
            row[mode] = {"measured_bytes": measured, "error": round(error, 4), **got}
        row["within_target"] = abs(row["live"]["error"]) <= TARGET
        results[case] = row
        print(
            f"{case:>20}: estimate {est.peak_bytes / MIB:6.1f} MiB  measured live "
            f"{row['live']['measured_bytes'] / MIB:6.1f} MiB ({row['live']['error']:+.1%})  "
            f"default {row['default']['measured_bytes'] / MIB:6.1f} MiB "
            f"({row['default']['error']:+.1%})  "
            + "  ".join(f"{p.name} {p.bytes / MIB:.1f}" for p in est.parts),
            flush=True,
        )
    out = HERE / "results" / "check.json"
    out.parent.mkdir(exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(results)
    out.write_text(
        json.dumps(
            {k: previous[k] for k in CASES if k in previous} | {"model": MODEL_SPEC}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
