"""Differential-privacy benchmark: the utility cost of DP-SGD (spec.differentialPrivacy).

Setup: the tiny Llama (vocab 512, hidden 64, 2 layers, random weights, tokenizer trained
on sample chat data), LoRA r 8 on all linear layers, 256 chat training rows
(``chat_rows(256, seed=1)``) and 48 held-out chat rows (``chat_rows(48, seed=2)``);
40 optimizer steps (5 epochs), global batch 32, learning rate 5e-3 constant (no warmup),
fp32, 1 process, 1 thread. Variants:

* non-private: the ordinary loop (fixed-size shuffled batches, hyperparameters.maxGradNorm 1)
* dp eps=8:    differentialPrivacy {targetEpsilon: 8}  (delta 1e-5, maxGradNorm 1, noise
               multiplier computed by the RDP accountant for q = 32/256, 40 steps)
* dp eps=1:    differentialPrivacy {targetEpsilon: 1}

The learning rate is the same for all (not re-tuned for DP). Each (variant, seed) runs
in a fresh process, interleaved seed-major, with seeds 1 and 2 (data order, LoRA init,
Poisson samples, noise); mean and spread are reported. Utility = eval loss (nats per
target token) of the tuned model on the held-out rows; base = before training.

    python benchmarks/privacy/bench_dp.py     # writes dp_results.json here
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trainer"))

from common import CACHE, manifest, train, train_log  # noqa: E402

ROOT = CACHE / "privacy-dp"
SEEDS = (1, 2)
STEPS = 40
HYPER = {"globalBatchSize": 32, "microBatchSize": 8, "learningRate": 5e-3, "scheduler": "constant"}
VARIANTS: dict[str, dict[str, Any] | None] = {
    "non-private": None,
    "dp eps=8": {"targetEpsilon": 8.0},
    "dp eps=1": {"targetEpsilon": 1.0},
}


def _files() -> dict[str, Path]:
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    data = ROOT / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = {"train": data / "train.jsonl", "eval": data / "eval.jsonl"}
    if not files["train"].exists():
        write_jsonl(chat_rows(256, seed=1, max_items=8), files["train"])
        write_jsonl(chat_rows(48, seed=2, max_items=8), files["eval"])
    spec = TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128)
    corpus = default_corpus() + corpus_from_rows(chat_rows(200, seed=11))
    files["model"] = ensure_tiny_model(ROOT / "tiny", spec, corpus)
    return files


def run(variant: str, seed: int) -> dict[str, Any]:
    files = _files()
    slug = variant.replace(" ", "-").replace("=", "")
    out = ROOT / f"out-{slug}-{seed}"
    dp = VARIANTS[variant]
    extra: dict[str, Any] = {"peft": {"lora": {"r": 8, "targetModules": ["all-linear"]}}}
    if dp is not None:
        extra["differentialPrivacy"] = dp
    doc = manifest(
        "lora",
        files["model"],
        files["train"],
        out,
        eval_data=files["eval"],
        hyper={**HYPER, "maxSteps": STEPS, "seed": seed, "precision": "fp32"},
        **extra,
    )
    started = time.perf_counter()
    result = train(doc, ROOT / f"work-{slug}-{seed}")
    seconds = time.perf_counter() - started
    log = train_log(out)
    lineage = json.loads((out / "lineage.json").read_text()).get("differentialPrivacy") or {}
    return {
        "variant": variant,
        "seed": seed,
        "evalLossBase": result.eval_results["base"]["loss"],
        "evalLossTuned": result.eval_results["tuned"]["loss"],
        "finalTrainLoss": result.final_loss,
        "epsilonSpent": lineage.get("epsilonSpent"),
        "noiseMultiplier": lineage.get("noiseMultiplier"),
        "delta": lineage.get("delta"),
        "meanStepSeconds": statistics.fmean(r["stepSeconds"] for r in log),
        "seconds": seconds,
    }


def _child(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", KUBETUNE_METRICS="off")
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    started = time.perf_counter()
    for stale in ROOT.glob("*"):  # earlier outputs would be resumed from, not retrained
        if stale.name not in ("tiny", "data"):
            shutil.rmtree(stale)
    _files()
    runs = [_child(["--variant", v, "--seed", str(s)]) for s in SEEDS for v in VARIANTS]
    summary: dict[str, Any] = {}
    base_step = statistics.fmean(
        r["meanStepSeconds"] for r in runs if r["variant"] == "non-private"
    )
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            "evalLossTuned": _spread([r["evalLossTuned"] for r in mine]),
            "evalLossBase": statistics.fmean(r["evalLossBase"] for r in mine),
            "epsilonSpent": mine[0]["epsilonSpent"],
            "noiseMultiplier": mine[0]["noiseMultiplier"],
            "stepTimeVsNonPrivate": statistics.fmean(r["meanStepSeconds"] for r in mine)
            / base_step,
        }
    results = {
        "settings": {
            "model": "tiny llama (vocab 512, hidden 64, 2 layers), LoRA r 8 all-linear",
            "trainRows": 256,
            "evalRows": 48,
            "steps": STEPS,
            "hyperparameters": HYPER,
            "precision": "fp32",
            "seeds": list(SEEDS),
            "variants": VARIANTS,
            "delta": "1e-5 (default: min(1e-5, 1/(10 N)))",
            "accountant": "rdp (Opacus 1.6.0)",
            "sampling": "Poisson, q = 32/256 (DP); fixed-size shuffled batches (non-private)",
            "torchThreads": 1,
        },
        "summary": summary,
        "runs": runs,
        "wallSeconds": time.perf_counter() - started,
    }
    (HERE / "dp_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'variant':12} {'eps spent':>9} {'sigma':>6} {'eval loss':>16} {'step time':>9}")
    for variant, row in summary.items():
        e = row["evalLossTuned"]
        eps = f"{row['epsilonSpent']:.3f}" if row["epsilonSpent"] is not None else "inf"
        sigma = f"{row['noiseMultiplier']:.3f}" if row["noiseMultiplier"] is not None else "-"
        print(
            f"{variant:12} {eps:>9} {sigma:>6} {e['mean']:>8.3f} ± {e['std']:.3f} "
            f"{row['stepTimeVsNonPrivate']:>8.1f}x"
        )
    base = statistics.fmean(r["evalLossBase"] for r in runs)
    print(f"base eval loss {base:.3f}; wall {results['wallSeconds']:.0f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run(args.variant, args.seed)))
    else:
        main()
