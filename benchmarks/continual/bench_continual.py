"""Continual-learning benchmark: forgetting of task a and gain on task b when a model
tuned on a is tuned on the conflicting task b with no protection, replay, EWC or L2-SP.

Setup (assets/continual_tasks.py): tasks a and b map the same 24 words to 24 code words
through different bijections (promptCompletion, 192 train / 48 eval rows each). The tiny
Llama (vocab 256, hidden 64, 2 layers, random weights, tokenizer trained on both tasks) is
fully fine-tuned on a for 160 steps (seed 0); that model is the base of every b run:
full fine-tuning, 60 steps, global batch 16, learning rate 3e-3 constant, 1 process,
1 thread. Variants (the task a rows and eval split are the same in all of them):

* none:   spec.continual with protectedTasks only (measures forgetting)
* replay: replay.ratio 0.3 (82 of a's rows join b's 192 every epoch)
* ewc:    regularizer ewc, strength 3e7, fisherSamples 48
* l2sp:   regularizer l2sp, strength 1

Each (variant, seed) runs in a fresh process, interleaved (seed-major), with seeds 1-3
(hyperparameters.seed: data order and replay rows); mean and spread are reported.
forgetting = a's eval loss after - before (nats/token); gain = b's eval loss base - tuned.

    python benchmarks/continual/bench_continual.py     # writes results.json here
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

from common import CACHE, manifest, train  # noqa: E402

ROOT = CACHE / "continual"
SEEDS = (1, 2, 3)
HYPER = {"globalBatchSize": 16, "microBatchSize": 16, "learningRate": 3e-3}
STEPS_A, STEPS_B = 160, 60
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "replay": {"replay": {"ratio": 0.3}},
    "ewc": {"regularizer": {"type": "ewc", "strength": 3.0e7, "fisherSamples": 48}},
    "l2sp": {"regularizer": {"type": "l2sp", "strength": 1.0}},
}


def _files() -> dict[str, Path]:
    from kubetune_trainer.assets.continual_tasks import corpus, write_tasks
    from kubetune_trainer.models.tiny import TinyModelSpec, ensure_tiny_model

    files = write_tasks(ROOT / "data")
    spec = TinyModelSpec(vocab_size=256, hidden_size=64, intermediate_size=128)
    files["tiny"] = ensure_tiny_model(ROOT / "tiny", spec, corpus())
    files["model_a"] = ROOT / "model-a"
    return files


def run_a() -> dict[str, Any]:
    files = _files()
    doc = manifest(
        "full",
        files["tiny"],
        files["a_train"],
        files["model_a"],
        fmt="promptCompletion",
        eval_data=files["a_eval"],
        hyper={**HYPER, "maxSteps": STEPS_A, "seed": 0},
    )
    result = train(doc, ROOT / "work-a")
    return {"aEvalLoss": result.eval_results["tuned"]["loss"]}


def run_b(variant: str, seed: int) -> dict[str, Any]:
    files = _files()
    out = ROOT / f"b-{variant}-{seed}"
    continual = {
        "protectedTasks": [
            {
                "name": "task-a",
                "train": str(files["a_train"]),
                "eval": str(files["a_eval"]),
                "format": "promptCompletion",
            }
        ],
        **VARIANTS[variant],
    }
    doc = manifest(
        "full",
        files["model_a"],
        files["b_train"],
        out,
        fmt="promptCompletion",
        eval_data=files["b_eval"],
        hyper={**HYPER, "maxSteps": STEPS_B, "seed": seed},
        continual=continual,
    )
    started = time.perf_counter()
    result = train(doc, ROOT / f"work-b-{variant}-{seed}")
    doc_c = result.eval_results["continual"]
    task = doc_c["protectedTasks"][0]
    return {
        "variant": variant,
        "seed": seed,
        "aLossBefore": task["lossBefore"],
        "aLossAfter": task["lossAfter"],
        "forgetting": task["forgetting"],
        "bLossBase": doc_c["newTask"]["lossBase"],
        "bLossTuned": doc_c["newTask"]["lossTuned"],
        "gain": doc_c["newTask"]["gain"],
        "seconds": time.perf_counter() - started,
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
    a = _child(["--task-a"])
    runs = [_child(["--variant", v, "--seed", str(s)]) for s in SEEDS for v in VARIANTS]
    summary: dict[str, Any] = {}
    none_forgetting = statistics.fmean(r["forgetting"] for r in runs if r["variant"] == "none")
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        forgetting = _spread([r["forgetting"] for r in mine])
        summary[variant] = {
            "forgetting": forgetting,
            "forgettingCutVsNone": 1.0 - forgetting["mean"] / none_forgetting,
            "bLossTuned": _spread([r["bLossTuned"] for r in mine]),
            "gain": _spread([r["gain"] for r in mine]),
        }
    results = {
        "settings": {
            "stepsA": STEPS_A,
            "stepsB": STEPS_B,
            "hyperparameters": HYPER,
            "seeds": list(SEEDS),
            "variants": VARIANTS,
            "torchThreads": 1,
        },
        "taskA": a,
        "summary": summary,
        "runs": runs,
        "wallSeconds": time.perf_counter() - started,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'variant':8} {'forgetting of a':>22} {'cut':>6} {'b eval loss':>18} {'gain on b':>18}")
    for variant, row in summary.items():
        f, b, g = row["forgetting"], row["bLossTuned"], row["gain"]
        print(
            f"{variant:8} {f['mean']:>12.3f} ± {f['std']:.3f} {row['forgettingCutVsNone']:>6.0%} "
            f"{b['mean']:>10.3f} ± {b['std']:.3f} {g['mean']:>10.3f} ± {g['std']:.3f}"
        )
    print(f"task a eval loss before b: {a['aEvalLoss']:.3f}; wall {results['wallSeconds']:.0f}s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-a", action="store_true")
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.task_a or args.variant:
        import logging

        import torch

        logging.disable(logging.WARNING)
        torch.set_num_threads(1)
        out = run_a() if args.task_a else run_b(args.variant, args.seed)
        print(json.dumps(out))
    else:
        main()
