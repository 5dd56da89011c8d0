"""Throughput and peak memory: our trainer vs. TRL's SFTTrainer, defaults and tuned.

Every variant trains on the same batches: TRL gets the rows in the order kubetune's
trainer draws them (its seeded shuffle) with ``train_sampling_strategy="sequential"``, and
each run hashes the real token ids of every training forward; the parent refuses results
whose digests differ, and reports the tokens of every variant.

Every run is a fresh process (this script re-invokes itself with ``--child VARIANT``
and reads one JSON line back), so no variant inherits another's allocator state,
caches or warm-up; rounds run the variants in alternating order and every figure is
the median over rounds of the ratio to TRL tuned measured in the same round. One torch
thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``): process CPU time is
then the work done, robust to other load on the shared machine.

- throughput: real (non-padding) tokens per second of process CPU time of the training
  loop (collation included, setup excluded); the wall-clock ratio is shown beside it;
- peak memory: the largest resident set size sampled every 10 ms during the training
  loop, minus the RSS just before the model is loaded (so weights, gradients, optimizer
  state, activations and the data pipeline's share count; the interpreter and imported
  libraries do not).

Model: the 256-wide, 4-layer Llama-style decoder of the earlier benchmark with its
vocabulary padded from the tokenizer's 2048 to 8192 entries (``--vocab``), so the
vocabulary is 32x the hidden size as in real LLMs (Llama-3-8B: 128256 / 4096 = 31x),
where the LM head and its logits dominate memory. The same weights for every variant.

    python benchmarks/trainer/throughput.py [--rounds 3] [--steps 16] [--batch 8]
    python benchmarks/trainer/throughput.py --check-loss   # our loss == TRL tuned's
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results, train, train_log

MODEL_SPEC: dict[str, Any] = {
    "vocab_size": 2048,  # the tokenizer's; the model's is padded to --vocab
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

#: every setting that differs between the variants (the rest is shared: same model,
#: data, batch, steps, learning rate 1e-4, AdamW, bf16 autocast, one process)
VARIANTS: dict[str, dict[str, str]] = {
    "trl-defaults": {
        "trainer": "TRL 1.16 SFTTrainer, SFTConfig defaults",
        "batching": "padded to the longest sample",
        "gradient checkpointing": "on (TRL default)",
        "loss on": "every token (TRL default for chat data)",
        "attention": "sdpa (transformers default), attention mask",
        "LM head": "TRL fused head, every position (no Triton on CPU)",
        "extra per step": "entropy + token accuracy",
    },
    "trl-tuned": {
        "trainer": "TRL 1.16 SFTTrainer",
        "batching": "padding_free=True (one packed row, position_ids + cu_seq_lens), "
        "pad_to_multiple_of=64",
        "gradient checkpointing": "off",
        "loss on": "assistant tokens (assistant_only_loss=True)",
        "attention": "kubetune_varlen (ours: per-sample causal SDPA from cu_seq_lens, "
        "lengths rounded up to 64)",
        "LM head": "TRL fused head, every position (no Triton on CPU)",
        "extra per step": "entropy + token accuracy (always on in TRL 1.16)",
    },
    "trl-tuned-unrounded": {
        "trainer": "TRL 1.16 SFTTrainer, as `trl-tuned` but no shape rounding (ablation)",
        "batching": "padding_free=True (one packed row, position_ids + cu_seq_lens)",
        "gradient checkpointing": "off",
        "loss on": "assistant tokens (assistant_only_loss=True)",
        "attention": "kubetune_varlen, exact sample lengths",
        "LM head": "TRL fused head, every position (no Triton on CPU)",
        "extra per step": "entropy + token accuracy (always on in TRL 1.16)",
    },
    "kubetune": {
        "trainer": "kubetune trainer, defaults + precision bf16",
        "batching": "padding-free packed row, rounded up to 64 tokens",
        "gradient checkpointing": "off (default)",
        "loss on": "assistant tokens (completionOnlyLoss default)",
        "attention": "kubetune_varlen (lengths rounded up to 64)",
        "LM head": "target positions only (rounded up to 64), chunked CE (1024 rows)",
        "extra per step": "none",
    },
    "kubetune-unrounded": {
        "trainer": "kubetune trainer, as `kubetune` but no shape rounding (ablation)",
        "batching": "padding-free packed row",
        "gradient checkpointing": "off (default)",
        "loss on": "assistant tokens",
        "attention": "kubetune_varlen, exact sample lengths",
        "LM head": "target positions only, chunked CE (1024 rows)",
        "extra per step": "none",
    },
    "kubetune-full-logits": {
        "trainer": "kubetune trainer, as `kubetune` but chunked CE off (ablation)",
        "batching": "padding-free packed row, rounded up to 64 tokens",
        "gradient checkpointing": "off (default)",
        "loss on": "assistant tokens",
        "attention": "kubetune_varlen (lengths rounded up to 64)",
        "LM head": "target positions only (exact count), full [targets, vocab] logits + CE",
        "extra per step": "none",
    },
}
BASELINE = "trl-tuned"


def setup(root: Path, distribution: str, vocab: int) -> tuple[Path, Path, list[dict[str, Any]]]:
    """The padded-vocabulary model and the data, built once and cached."""
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    rows = chat_rows(512, seed=2024, **DISTRIBUTIONS[distribution])  # type: ignore[arg-type]
    data = write_jsonl(rows, root / f"chat-{distribution}.jsonl")
    corpus = default_corpus() + corpus_from_rows(chat_rows(400, seed=7, max_items=60))
    base = ensure_tiny_model(root / "model-4m", TinyModelSpec(seed=3, **MODEL_SPEC), corpus)
    model = root / f"model-4m-vocab{vocab}"
    if not (model / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(11)
        lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lm.resize_token_embeddings(vocab, mean_resizing=False)  # padded vocab, as real LLMs
        lm.save_pretrained(model)
        AutoTokenizer.from_pretrained(base).save_pretrained(model)
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


# -- measurement inside a child process --------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class Meter:
    """CPU/wall clock and a 10 ms RSS sampler around the training loop."""

    def __init__(self) -> None:
        self.rss_before_model = 0
        self.peak = self.at_start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def before_model(self) -> None:
        self.rss_before_model = _rss()

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.peak = self.at_start = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def stop(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss())

    def result(self, tokens: float, padded: float) -> dict[str, Any]:
        return {
            "tokens": tokens,
            "seconds": self.wall,
            "cpu_seconds": self.cpu,
            "tokens_per_second": tokens / self.wall,
            "tokens_per_cpu_second": tokens / self.cpu,
            "padding_fraction": 1 - tokens / max(padded, tokens),
            "peak_memory_bytes": self.peak - self.rss_before_model,
            "setup_memory_bytes": self.at_start - self.rss_before_model,
        }


def _trl_trainer(variant: str, model_dir: Path, rows: list[Any], args: Any, work: Path) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tuned = variant.startswith("trl-tuned")
    rounded = variant == "trl-tuned"
    attn = "sdpa"
    if tuned:
        from kubetune_trainer.models import varlen_attention

        attn = varlen_attention.register_varlen_attention()
        if not rounded:
            varlen_attention.SAMPLE_MULTIPLE = 1
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn
    )
    tuned_settings: dict[str, Any] = {
        "padding_free": True,
        "max_length": None,  # TRL asks for it with padding_free; samples are <= 526 tokens
        "gradient_checkpointing": False,
        "assistant_only_loss": True,
        # a few row lengths, not one per step, as kubetune's PACKED_ROW_MULTIPLE
        # (CPU kernels are compiled and cached per shape)
        "pad_to_multiple_of": 64 if rounded else None,
    }
    config = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=10_000,
        seed=42,
        disable_tqdm=True,
        # the rows come in kubetune's step order (see step_order): no reshuffling
        train_sampling_strategy="sequential",
        # the tuned settings; the defaults variant keeps TRL's own
        **(tuned_settings if tuned else {}),
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    return trainer, model


def step_order(model_dir: Path, data: Path, args: Any, n_rows: int) -> list[int]:
    """The rows kubetune's trainer draws in its first ``--steps`` steps, in order: TRL gets
    them in this order with a sequential sampler, so every variant trains on the same
    batches (the digests in the results prove it)."""
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune_trainer.data.batching import BatchPlan

    doc = manifest("full", model_dir, data, data.parent, hyper=_hyper(args))
    job = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    plan = BatchPlan(n_rows, args.batch, args.batch, 1, 1, job.spec.hyperparameters.seed)
    return [i for step in range(args.steps) for ids in plan.micro_batches(step, 0) for i in ids]


def _hyper(args: Any) -> dict[str, Any]:
    return {
        "maxSteps": args.steps,
        "globalBatchSize": args.batch,
        "microBatchSize": args.batch,
        "learningRate": 1e-4,
        "precision": "bf16",  # TRL's default, also on CPU: like with like
    }


class BatchLog:
    """Real tokens and a digest of the token ids of every training forward, counted the
    same way for every variant (at the model: the Trainer collates one batch ahead)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id
        self.tokens = 0
        self.padded = 0
        self.digest = hashlib.sha256()

    def attach(self, model: Any) -> None:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, a: Any, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if mask is not None:  # padded rows
            real = ids[mask.bool()]
        else:  # one packed row, padded at its end to a multiple of 64 tokens
            row = ids.flatten()
            keep = (row != self.pad).nonzero()
            real = row[: int(keep[-1]) + 1] if keep.numel() else row[:0]
        self.tokens += real.numel()
        self.padded += ids.numel()
        self.digest.update(real.long().numpy().tobytes())

    def result(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "padded": self.padded, "digest": self.digest.hexdigest()}


def child_trl(
    variant: str, model_dir: Path, data: Path, rows: list[Any], args: Any, work: Path
) -> dict[str, Any]:
    from transformers import TrainerCallback

    from kubetune_trainer.models import varlen_attention

    ordered = [rows[i] for i in step_order(model_dir, data, args, len(rows))]
    meter = Meter()
    meter.before_model()
    trainer, model = _trl_trainer(variant, model_dir, ordered, args, work)
    batches = BatchLog(trainer.processing_class.pad_token_id)
    batches.attach(model)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            meter.start()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            meter.stop()

    trainer.add_callback(Clock())
    trainer.train()
    seen = batches.result()
    result = meter.result(seen["tokens"], seen["padded"])
    result["batch_digest"] = seen["digest"]
    result["settings"] = {
        "train_sampling_strategy": trainer.args.train_sampling_strategy,
        "pad_to_multiple_of": trainer.args.pad_to_multiple_of,
        "attention_length_multiple": (
            varlen_attention.SAMPLE_MULTIPLE if variant != "trl-defaults" else None
        ),
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "bf16": trainer.args.bf16,
        "padding_free": trainer.args.padding_free,
        "assistant_only_loss": trainer.args.assistant_only_loss,
        "attn_implementation": model.config._attn_implementation,
        "optim": str(trainer.args.optim),
    }
    return result


def child_ours(variant: str, model_dir: Path, data: Path, args: Any, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    import kubetune_trainer.models.load as load
    import kubetune_trainer.trainer as loop
    from kubetune_trainer.methods.base import Method

    if variant == "kubetune-full-logits":
        Method.lm_head_chunk_size = None
    if variant == "kubetune-unrounded":  # one kernel shape per distinct length, as before
        from kubetune_trainer.methods import chunked_ce
        from kubetune_trainer.models import varlen_attention

        loop.PACKED_ROW_MULTIPLE = chunked_ce.ROW_MULTIPLE = varlen_attention.SAMPLE_MULTIPLE = 1
    out = work / "out"
    doc = manifest(
        "full",
        model_dir,
        data,
        out,
        hyper=_hyper(args),
    )
    meter = Meter()
    batches: list[BatchLog] = []
    load_model, train_steps = load.load_causal_lm, loop.Trainer.train_steps

    def loading(*a: Any, **k: Any) -> Any:
        first = not meter.rss_before_model  # the trained model, not a reload for export
        if first:
            meter.before_model()
        model = load_model(*a, **k)
        if first:
            batches.append(BatchLog(AutoTokenizer.from_pretrained(model_dir).pad_token_id))
            batches[0].attach(model)
        return model

    def timed(self: Any, *a: Any, **k: Any) -> Any:
        meter.start()
        try:
            return train_steps(self, *a, **k)
        finally:
            meter.stop()

    load.load_causal_lm = loading
    loop.Trainer.train_steps = timed  # type: ignore[method-assign]
    train(doc, work)
    seen = batches[0].result()
    if seen["tokens"] != sum(r["tokens"] for r in train_log(out)):
        raise RuntimeError("the token count at the model disagrees with the train log")
    result = meter.result(seen["tokens"], seen["padded"])
    result["batch_digest"] = seen["digest"]
    from kubetune_trainer.methods.chunked_ce import ROW_MULTIPLE
    from kubetune_trainer.models.varlen_attention import SAMPLE_MULTIPLE

    result["settings"] = {
        "lm_head_chunk_size": Method.lm_head_chunk_size,
        "packed_row_multiple": loop.PACKED_ROW_MULTIPLE,
        "lm_head_row_multiple": ROW_MULTIPLE,
        "attention_length_multiple": SAMPLE_MULTIPLE,
    }
    return result


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    # every child imports the same libraries before the memory baseline, so lazy imports
    # after the model load (ours or TRL's) are not counted as training memory
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    import kubetune_trainer.run
    import kubetune_trainer.trainer  # noqa: F401

    root = CACHE / "throughput"
    model, data, rows = setup(root, args.distribution, args.vocab)
    work = root / f"work-{args.child}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        if args.child.startswith("trl"):
            result = child_trl(args.child, model, data, rows, args, work)
        else:
            result = child_ours(args.child, model, data, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


# -- the same objective --------------------------------------------------------------------
def check_loss(args: argparse.Namespace) -> dict[str, float]:
    """Our loss and TRL tuned's on the same 8 conversations, same weights, fp32."""
    import torch

    from kubetune_trainer.data.batching import collate
    from kubetune_trainer.data.encode import Encoder
    from kubetune_trainer.data.formats import ChatExample
    from kubetune_trainer.methods.base import find_pretrained, token_logprobs
    from kubetune_trainer.methods.chunked_ce import chunkable_head
    from kubetune_trainer.trainer import PACKED_ROW_MULTIPLE

    torch.set_num_threads(1)
    root = CACHE / "throughput"
    model_dir, _, rows = setup(root, args.distribution, args.vocab)
    rows = rows[: args.batch]
    work = root / "work-check"
    trainer, model = _trl_trainer("trl-tuned", model_dir, rows, args, work)
    features = [trainer.train_dataset[i] for i in range(len(rows))]
    trl_batch = trainer.data_collator(features)
    model.train()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, dict(trl_batch)))
    encoder = Encoder(trainer.processing_class, 1024, completion_only_loss=True)
    units = [encoder.encode(ChatExample(r["messages"])) for r in rows]
    batch = collate(  # both rows rounded up to 64 tokens, as in training
        units,
        padding_free=True,
        pad_token_id=trainer.processing_class.pad_token_id,
        dummy=units[0],
        pad_to_multiple_of=PACKED_ROW_MULTIPLE,
    )
    with torch.no_grad():
        lp = token_logprobs(model, batch, head=chunkable_head(find_pretrained(model)))
    ours = float(-lp.logprobs.sum() / batch.label_tokens)
    same_ids = torch.equal(batch.inputs["input_ids"].flatten(), trl_batch["input_ids"].flatten())
    shutil.rmtree(work, ignore_errors=True)
    return {
        "trl_tuned_loss": trl_loss,
        "kubetune_loss": ours,
        "abs_difference": abs(trl_loss - ours),
        "target_tokens_ours": float(batch.label_tokens),
        "target_tokens_trl": float((trl_batch["labels"] != -100).sum()),
        "same_input_ids": float(same_ids),
    }


# -- the parent: fresh processes, interleaved ------------------------------------------------
def run_child(variant: str, distribution: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--distribution",
        distribution,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--vocab",
        str(args.vocab),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{variant} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def bench_distribution(distribution: str, args: argparse.Namespace) -> dict[str, Any]:
    root = CACHE / "throughput"
    model, _, rows = setup(root, distribution, args.vocab)
    names = list(VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):  # cancel drift
            r = run_child(name, distribution, args)
            runs[name].append(r)
            print(
                f"[{distribution}] round {round_ + 1} {name}: "
                f"{r['tokens_per_cpu_second']:.0f} tok/CPU-s, {r['tokens_per_second']:.0f} tok/s, "
                f"peak {r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['tokens']:.0f} tokens)",
                flush=True,
            )
    base = runs[BASELINE]

    def paired(key: str) -> dict[str, float]:
        # runs of the same round are adjacent in time: ratio per round, then the median
        return {
            n: statistics.median(r[key] / b[key] for r, b in zip(rs, base, strict=True))
            for n, rs in runs.items()
        }

    def median(key: str) -> dict[str, float]:
        return {n: statistics.median(r[key] for r in rs) for n, rs in runs.items()}

    digests = {r["batch_digest"] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        raise RuntimeError(f"[{distribution}] variants trained on different batches: {digests}")
    return {
        "lengths": length_stats(model, rows),
        "same_batches": True,
        "tokens": {n: rs[0]["tokens"] for n, rs in runs.items()},
        "median_tokens_per_cpu_second": median("tokens_per_cpu_second"),
        "median_tokens_per_second": median("tokens_per_second"),
        "median_peak_memory_bytes": median("peak_memory_bytes"),
        "padding_fraction": median("padding_fraction"),
        "cpu_ratio_vs_baseline": paired("tokens_per_cpu_second"),
        "wall_ratio_vs_baseline": paired("tokens_per_second"),
        "memory_ratio_vs_baseline": paired("peak_memory_bytes"),
        "settings": {n: rs[0]["settings"] for n, rs in runs.items()},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192, help="model vocabulary (padded)")
    parser.add_argument("--data", choices=[*DISTRIBUTIONS, "all"], default="all")
    parser.add_argument("--check-loss", action="store_true", help="only compare the losses")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--distribution", choices=list(DISTRIBUTIONS), default="long-tail")
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.check_loss:
        print(json.dumps(check_loss(args), indent=2))
        return None
    names = list(DISTRIBUTIONS) if args.data == "all" else [args.data]
    start = time.perf_counter()
    results = {name: bench_distribution(name, args) for name in names}
    checks = {
        name: check_loss(argparse.Namespace(**{**vars(args), "distribution": name}))
        for name in names
    }
    summary = {
        "threads": 1,
        "steps": args.steps,
        "batch": args.batch,
        "rounds": args.rounds,
        "vocab": args.vocab,
        "model": MODEL_SPEC,
        "baseline": BASELINE,
        "variants": VARIANTS,
        "loss_check": checks,
        "distributions": results,
        "total_seconds": time.perf_counter() - start,
    }
    path = save_results("throughput", summary)
    for name, result in results.items():
        print(f"{name}: lengths {result['lengths']}")
        for v in VARIANTS:
            print(
                f"  {v:>22}: {result['median_tokens_per_cpu_second'][v]:7.0f} tok/CPU-s "
                f"x{result['cpu_ratio_vs_baseline'][v]:.2f} "
                f"(wall x{result['wall_ratio_vs_baseline'][v]:.2f}), "
                f"peak {result['median_peak_memory_bytes'][v] / 2**20:.0f} MiB "
                f"x{result['memory_ratio_vs_baseline'][v]:.2f}"
            )
    print(json.dumps(checks, indent=2))
    print(f"results: {path}")
    return None


if __name__ == "__main__":
    main()
