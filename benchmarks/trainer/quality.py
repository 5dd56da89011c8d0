"""Quality: eval-loss improvement of each PEFT method as a fraction of full fine-tuning's.

The base is the small model that has learned some English (pre-trained briefly on the
standard library's docstrings, ``kubetune_trainer.models.small_base``, cached after the
first run). It is fine-tuned on a chat task it has never seen (the synthetic instruction
tasks of ``sample_data``: spell out numbers, reverse or sort lists, count words) with
each method, same data, same steps, over a sweep of learning rates and several seeds.

Three disjoint splits: train, *selection* (picks each method's learning rate: lowest
mean loss over seeds) and *eval* (reported, never used to choose). When a method's best
rate is at an end of its sweep the sweep is extended one step that way (``--extend``
times at most), and the report says so if the optimum is still at the edge. Loss is the
mean NLL of the assistant tokens. Every run is a fresh process (one torch thread; two
run side by side), so no run inherits allocator, cache or RNG state from another.

    python benchmarks/trainer/quality.py [--steps 40] [--seeds 2] [--jobs 2]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results, train

#: method -> (extra spec, learning rates tried first; neighbours are x3 apart)
METHODS: dict[str, tuple[dict[str, Any], list[float]]] = {
    "full": ({}, [1e-3, 3e-3, 1e-2]),
    "lora": ({"peft": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}}, [3e-3, 1e-2, 3e-2]),
    "adapter": ({"peft": {"adapter": {"bottleneckSize": 64}}}, [3e-3, 1e-2, 3e-2]),
    "prefix": ({"peft": {"prefix": {"numVirtualTokens": 20}}}, [1e-1, 3e-1, 1.0]),
    "prompt": ({"peft": {"prompt": {"numVirtualTokens": 20}}}, [1e-1, 3e-1, 1.0]),
}
GLOBAL_BATCH = 16
MAX_LR = 1.0  # spec.hyperparameters.learningRate's upper bound
SPLITS = {"train": (800, 501), "selection": (120, 502), "eval": (120, 503)}
ROOT = CACHE / "quality"


def base_dir() -> Path:
    from kubetune_trainer.models.small_base import ensure_small_base

    return ensure_small_base(ROOT / "small-base")


def write_splits() -> dict[str, Path]:
    """Train / selection / eval from different seeds, duplicates of earlier splits dropped."""
    from kubetune_trainer.assets.sample_data import chat_rows, write_jsonl

    seen: set[str] = set()
    paths: dict[str, Path] = {}
    for split, (count, seed) in SPLITS.items():
        rows = []
        for row in chat_rows(count, seed=seed, max_items=12):
            key = json.dumps(row, sort_keys=True)
            if key not in seen:
                seen.add(key)
                rows.append(row)
        paths[split] = write_jsonl(rows, ROOT / f"task-{split}.jsonl")
    return paths


def assistant_loss(model: Any, tokenizer: Any, path: Path) -> float:
    """Mean NLL per assistant token over a chat JSONL file (one conversation at a time)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for line in path.read_text().splitlines():
            enc = tokenizer.apply_chat_template(
                json.loads(line)["messages"],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids = torch.tensor([enc["input_ids"]])
            mask = torch.tensor([enc["assistant_masks"]], dtype=torch.bool)
            labels = ids.masked_fill(~mask, -100)
            targets = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * targets
            count += targets
    return total / count


def run_one(method: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    """One fine-tuning run (or the base model, method "base") scored on both held-out splits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    base = ROOT / "small-base"
    splits = {name: ROOT / f"task-{name}.jsonl" for name in SPLITS}
    tokenizer = AutoTokenizer.from_pretrained(base)
    started = time.process_time()
    if method == "base":
        model = AutoModelForCausalLM.from_pretrained(base)
        trainable = 0
    else:
        work = ROOT / f"ft-{method}-{lr:g}-s{seed}"
        shutil.rmtree(work, ignore_errors=True)
        doc = manifest(
            method,
            base,
            splits["train"],
            work / "out",
            hyper={
                "maxSteps": steps,
                "globalBatchSize": GLOBAL_BATCH,
                "microBatchSize": GLOBAL_BATCH if method not in ("prefix", "prompt") else 8,
                "learningRate": lr,
                "warmupRatio": 0.05,
                "weightDecay": 0.0,
                "seed": seed,
            },
            dataset={"maxSeqLength": 512},
            **METHODS[method][0],
        )
        model = train(doc, work).model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "method": method,
        "learning_rate": lr,
        "seed": seed,
        "selection_loss": assistant_loss(model, tokenizer, splits["selection"]),
        "eval_loss": assistant_loss(model, tokenizer, splits["eval"]),
        "trainable_parameters": trainable,
        "cpu_seconds": time.process_time() - started,
    }


def spawn(method: str, lr: float, seed: int, steps: int) -> dict[str, Any]:
    """``run_one`` in a fresh interpreter; its last stdout line is the result."""
    cmd = [sys.executable, __file__, "--one", method, repr(lr), str(seed), "--steps", str(steps)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} lr {lr:g} seed {seed} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{method:>8} lr {lr:<6g} seed {seed}: selection {result['selection_loss']:.3f} "
        f"eval {result['eval_loss']:.3f} ({result['cpu_seconds']:.0f} CPU-s)",
        flush=True,
    )
    return result


def mean_sd(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarise(runs: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    chosen = [r for r in runs if r["learning_rate"] == rate]
    return {
        "learning_rate": rate,
        "selection_loss": mean_sd([r["selection_loss"] for r in chosen]),
        "eval_loss": mean_sd([r["eval_loss"] for r in chosen]),
        "trainable_parameters": chosen[0]["trainable_parameters"],
    }


def sweep(args: argparse.Namespace) -> None:
    started = time.monotonic()
    seeds = list(range(1, args.seeds + 1))
    rates = {name: list(grid) for name, (_, grid) in METHODS.items()}
    runs: list[dict[str, Any]] = []

    def batch(todo: list[tuple[str, float, int]]) -> None:
        with ThreadPoolExecutor(args.jobs) as pool:
            runs.extend(pool.map(lambda t: spawn(*t, args.steps), todo))

    base_run = spawn("base", 0.0, 0, args.steps)
    # interleaved: the seeds of one (method, rate) never run back to back in one slot
    batch([(m, lr, s) for s in seeds for m, grid in rates.items() for lr in grid])
    extended: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.extend):
        todo = []
        for name, grid in rates.items():
            best = _best_rate(runs, name)
            edge = grid[0] if best == grid[0] else grid[-1] if best == grid[-1] else None
            if edge is None:
                continue
            new = edge / 3 if edge == grid[0] else edge * 3
            if new > MAX_LR:  # the API's bound: the sweep cannot go further
                continue
            grid.insert(0, new) if edge == grid[0] else grid.append(new)
            extended[name].append(new)
            todo += [(name, new, s) for s in seeds]
        if not todo:
            break
        batch(todo)

    report(args, runs, base_run, rates, extended, time.monotonic() - started)


def report(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    base_run: dict[str, Any],
    rates: dict[str, list[float]],
    extended: dict[str, list[float]],
    wall_seconds: float,
    note: str = "",
) -> None:
    """Pick each method's rate on the selection split, summarise the eval split, save."""
    seeds = sorted({r["seed"] for r in runs})
    base_eval = base_run["eval_loss"]
    best: dict[str, dict[str, Any]] = {}
    for name, grid in rates.items():
        mine = [r for r in runs if r["method"] == name]
        rate = _best_rate(runs, name)
        best[name] = summarise(mine, rate) | {
            "at_edge_of_sweep": rate in (grid[0], grid[-1]),
            "improvement": base_eval - summarise(mine, rate)["eval_loss"]["mean"],
        }
    full = best["full"]["improvement"]
    for name, result in best.items():
        result["fraction_of_full"] = result["improvement"] / full if full > 0 else float("nan")
        e = result["eval_loss"]
        edge = " (edge)" if result["at_edge_of_sweep"] else ""
        print(
            f"{name:>8}: lr {result['learning_rate']:g}{edge}"
            f", eval loss {base_eval:.3f} -> {e['mean']:.3f} ± {e['sd']:.3f}, "
            f"{result['fraction_of_full']:.0%} of full fine-tuning's improvement"
        )
    from kubetune_trainer.models.small_base import SmallBaseSpec

    spec = SmallBaseSpec()
    path = save_results(
        "quality",
        {
            "model": {
                "hidden_size": spec.model.hidden_size,
                "num_hidden_layers": spec.model.num_hidden_layers,
                "vocab_size": spec.model.vocab_size,
            },
            "pretraining": {
                "corpus": "Python standard library docstrings",
                "steps": spec.steps,
                "tokens": spec.steps * spec.batch_size * spec.block_size,
            },
            "task": "synthetic chat instructions (spell/reverse/sort/count)",
            "splits": {k: sum(1 for _ in (ROOT / f"task-{k}.jsonl").open()) for k in SPLITS},
            "steps": args.steps,
            "global_batch": GLOBAL_BATCH,
            "seeds": seeds,
            "isolation": f"one fresh process per run, 1 torch thread, {args.jobs} at a time",
            "wall_seconds": wall_seconds,
            "cpu_seconds_in_runs": sum(r["cpu_seconds"] for r in runs),
            "note": note,
            "base": {"selection_loss": base_run["selection_loss"], "eval_loss": base_eval},
            "best": best,
            "extended": extended,
            "sweeps": {
                name: [summarise([r for r in runs if r["method"] == name], lr) for lr in grid]
                for name, grid in rates.items()
            },
            "runs": runs,
        },
    )
    print(path)


def _best_rate(runs: list[dict[str, Any]], name: str) -> float:
    """The rate with the lowest mean selection loss over seeds."""
    by_rate: dict[float, list[float]] = {}
    for r in runs:
        if r["method"] == name:
            by_rate.setdefault(r["learning_rate"], []).append(r["selection_loss"])
    return min(by_rate, key=lambda lr: statistics.fmean(by_rate[lr]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--extend", type=int, default=2, help="sweep extensions at most")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "LR", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        method, lr, seed = args.one
        print(json.dumps(run_one(method, float(lr), int(seed), args.steps)))
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    base_dir()
    write_splits()
    sweep(args)


if __name__ == "__main__":
    main()
