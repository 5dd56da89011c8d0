"""Throughput: our trainer vs. a plain TRL SFTTrainer (default settings), side by side.

Same model (a ~4M-parameter Llama-style decoder), same variable-length chat data, same
batch (8 samples per step, one process), same number of steps, full fine-tuning with
AdamW and bf16 mixed precision in both (TRL's configs default to ``bf16=True``, also on
CPU; ours is set to ``precision: bf16`` to match). Only real (non-padding) tokens are
counted for both; time is the training loop's wall time (data collation included for
both, setup and evaluation excluded). Runs are interleaved over several rounds
(alternating order) and the speed-up is the median of the per-round ratios, because
the CPU is shared and noisy. Both wall-clock and process-CPU-time throughput are
recorded; with ``--threads 1`` the CPU-time ratio is robust to other load on the
machine (one thread: no spin-waiting, CPU time = work done).

Variants of ours:
- ``kubetune`` (defaults, bf16): padding-free packed batches + loss (and LM-head logits)
  on assistant tokens only;
- ``kubetune-all-tokens``: ``completionOnlyLoss: false``, the same objective as TRL's
  default (loss on every token), isolating the effect of padding-free batching;
- ``kubetune-fp32``: our CPU default precision (``auto`` = fp32 on CPU) against TRL's
  bf16 default — the conservative comparison.

    python benchmarks/trainer/throughput.py [--steps 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results, train, train_log

MODEL_SPEC: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


DISTRIBUTIONS = {
    # uniform 1..60 list items per task: lengths ~15-400 tokens
    "uniform": {"max_items": 60, "multi_turn": 0.35, "long_tail": False},
    # log-normal list sizes (median ~8, tail to 150): the heavy tail of real chat data
    "long-tail": {"max_items": 150, "multi_turn": 0.35, "long_tail": True},
}


def setup(root: Path, distribution: str) -> tuple[Path, Path, list[dict[str, Any]]]:
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    rows = chat_rows(512, seed=2024, **DISTRIBUTIONS[distribution])  # type: ignore[arg-type]
    data = write_jsonl(rows, root / f"chat-{distribution}.jsonl")
    corpus = default_corpus() + corpus_from_rows(chat_rows(400, seed=7, max_items=60))
    model = ensure_tiny_model(root / "model-4m", TinyModelSpec(seed=3, **MODEL_SPEC), corpus)
    return model, data, rows


def length_stats(model_dir: Path, rows: list[dict[str, Any]]) -> dict[str, float]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = sorted(
        len(
            tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in rows
    )
    return {
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "p90": lengths[int(0.9 * len(lengths))],
        "max": lengths[-1],
        "mean": sum(lengths) / len(lengths),
    }


def run_trl(
    model_dir: Path, rows: list[dict[str, Any]], steps: int, batch: int, work: Path
) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=10_000,
        seed=42,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    counted = {"tokens": 0.0, "padded": 0.0}

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # counted at the model, not the collator: the Trainer collates one batch ahead
        if module.training and kwargs.get("attention_mask") is not None:
            counted["tokens"] += float(kwargs["attention_mask"].sum())
            counted["padded"] += float(kwargs["attention_mask"].numel())

    model.register_forward_pre_hook(count, with_kwargs=True)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    trainer.add_callback(Clock())
    trainer.train()
    seconds = clock["end"] - clock["start"]
    cpu = clock["cpu_end"] - clock["cpu_start"]
    return {
        "tokens": counted["tokens"],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_second": counted["tokens"] / seconds,
        "tokens_per_cpu_second": counted["tokens"] / cpu,
        "padding_fraction": 1 - counted["tokens"] / max(counted["padded"], 1.0),
    }


def run_ours(
    model_dir: Path,
    data: Path,
    steps: int,
    batch: int,
    work: Path,
    all_tokens: bool,
    precision: str = "bf16",
) -> dict[str, float]:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    doc = manifest(
        "full",
        model_dir,
        data,
        out,
        hyper={
            "maxSteps": steps,
            "globalBatchSize": batch,
            "microBatchSize": batch,
            "learningRate": 1e-4,
            # TRL's configs default to bf16 mixed precision (also on CPU): compare like with like
            "precision": precision,
        },
        dataset={"completionOnlyLoss": not all_tokens, "packing": True},
    )
    import kubetune_trainer.trainer as loop

    clock: dict[str, float] = {}
    original = loop.Trainer.train_steps

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            clock["seconds"] = time.perf_counter() - start
            clock["cpu"] = time.process_time() - cpu_start

    loop.Trainer.train_steps = timed  # type: ignore[method-assign]
    try:
        train(doc, work)
    finally:
        loop.Trainer.train_steps = original  # type: ignore[method-assign]
    tokens = sum(r["tokens"] for r in train_log(out))
    return {
        "tokens": tokens,
        "seconds": clock["seconds"],
        "cpu_seconds": clock["cpu"],
        "tokens_per_second": tokens / clock["seconds"],
        "tokens_per_cpu_second": tokens / clock["cpu"],
        "padding_fraction": 0.0,
    }


def bench_distribution(distribution: str, args: argparse.Namespace) -> dict[str, Any]:
    root = CACHE / "throughput"
    model, data, rows = setup(root, distribution)
    runs: dict[str, list[dict[str, float]]] = {
        "trl-sft-defaults": [],
        "kubetune": [],
        "kubetune-all-tokens": [],
        "kubetune-fp32": [],
    }
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # cancel drift
        for name in order:
            work = root / f"work-{name}"
            shutil.rmtree(work, ignore_errors=True)
            if name == "trl-sft-defaults":
                result = run_trl(model, rows, args.steps, args.batch, work)
            else:
                result = run_ours(
                    model,
                    data,
                    args.steps,
                    args.batch,
                    work,
                    all_tokens=name.endswith("all-tokens"),
                    precision="fp32" if name.endswith("fp32") else "bf16",
                )
            runs[name].append(result)
            print(
                f"[{distribution}] round {round_ + 1} {name}: {result['tokens_per_second']:.0f} "
                f"tok/s, {result['tokens_per_cpu_second']:.0f} tok/CPU-s "
                f"({result['tokens']:.0f} tokens, {result['seconds']:.2f}s)",
                flush=True,
            )
    median = {n: statistics.median(r["tokens_per_second"] for r in rs) for n, rs in runs.items()}
    trl = runs["trl-sft-defaults"]

    # the CPU is shared: compare runs of the same round (adjacent in time), then take
    # the median of those paired ratios
    def paired(key: str) -> dict[str, float]:
        return {
            name: statistics.median(r[key] / t[key] for r, t in zip(rs, trl, strict=True))
            for name, rs in runs.items()
        }

    return {
        "lengths": length_stats(model, rows),
        "median_tokens_per_second": median,
        "median_tokens_per_cpu_second": {
            n: statistics.median(r["tokens_per_cpu_second"] for r in rs) for n, rs in runs.items()
        },
        "speedup_vs_trl": paired("tokens_per_second"),
        "speedup_vs_trl_cpu_time": paired("tokens_per_cpu_second"),
        "trl_padding_fraction": statistics.median(
            r["padding_fraction"] for r in runs["trl-sft-defaults"]
        ),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", choices=[*DISTRIBUTIONS, "all"], default="all")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = default); 1 makes CPU-time ratios robust on a shared machine",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = list(DISTRIBUTIONS) if args.data == "all" else [args.data]
    results = {name: bench_distribution(name, args) for name in names}
    summary = {
        "threads": args.threads or "default",
        "steps": args.steps,
        "batch": args.batch,
        "rounds": args.rounds,
        "model": MODEL_SPEC,
        "distributions": results,
    }
    path = save_results("throughput", summary)
    for name, result in results.items():
        print(
            f"{name}: lengths {result['lengths']}, TRL padding {result['trl_padding_fraction']:.0%}"
        )
        for variant, value in result["median_tokens_per_second"].items():
            speedup = result["speedup_vs_trl"][variant]
            cpu = result["speedup_vs_trl_cpu_time"][variant]
            print(f"  {variant:>22}: {value:8.0f} tok/s  x{speedup:.2f} wall, x{cpu:.2f} CPU time")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
