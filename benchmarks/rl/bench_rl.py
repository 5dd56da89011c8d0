"""Online RL benchmark: reward and KL curves of PPO, GRPO and RLOO, generation throughput
and its share of step time, and peak memory of PPO with full weights vs LoRA.

Every variant runs in a fresh process (``--variant NAME``, spawned by the parent), so
imports, allocator state and peak RSS are its own. Settings (all variants):

* learning curves: the tiny Llama of the trainer tests (vocab 512, hidden 64, 2 layers,
  random weights), 48 counting prompts (``count_prompt_rows(seed=31)``), 16 held-out ones;
  reward = regex ``[0-9]`` (the answer holds a digit); ``maxNewTokens`` 3; 8 prompts per
  step in micro-batches of 4; learning rate 3e-3 constant; 40 RL steps; GRPO/RLOO 4
  samples per prompt, PPO 1 sample and 2 PPO epochs with adaptive KL (target 4, horizon
  200); seed 42; 1 process, ``torch.set_num_threads(2)``.
* baseline: TRL 1.16 ``GRPOTrainer`` on the same model, prompts, reward function and batch
  (32 completions = 8 prompts x 4, one update per batch, 40 steps), at its defaults
  (learning rate 1e-6 with linear decay, beta 0) and tuned to our GRPO's settings
  (3e-3 constant, beta 0.04). Its held-out reward is measured the same way (one sample per
  prompt at temperature 1, 3 new tokens); its logged per-token KL is scaled by the 3
  tokens of a completion to read as ours (per response).
* memory: a ~25M-parameter Llama (vocab 2048, hidden 512, 8 layers), PPO, 3 RL steps of
  8 prompts x 32 new tokens, full weights vs LoRA r=16 (reference = base under the adapter).
  Peak RSS of the process (``ru_maxrss``) and its RSS before training starts.

    python benchmarks/rl/bench_rl.py            # all variants, writes results.json + PNG
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trainer"))

from common import CACHE, manifest, train, train_log  # noqa: E402

CURVE_VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": {"method": "grpo"},
    "rloo": {"method": "rloo"},
    "ppo": {
        "method": "ppo",
        "rlhf": {"ppo": {"epochs": 2}, "kl": {"adaptive": {"target": 4.0, "horizon": 200}}},
    },
}
#: the baseline: TRL's GRPOTrainer on the same model, prompts, reward and batch shape, at
#: its defaults (learning rate 1e-6, linear decay, beta 0: no reference model) and tuned to
#: our GRPO's settings (3e-3 constant, beta 0.04)
TRL_VARIANTS: dict[str, dict[str, Any]] = {
    "trl-grpo-defaults": {},
    "trl-grpo-tuned": {
        "learning_rate": 3e-3,
        "beta": 0.04,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
    },
}
MEMORY_VARIANTS: dict[str, dict[str, Any]] = {
    "ppo-full-25m": {"method": "ppo"},
    "ppo-lora-25m": {"method": "ppo", "peft": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}},
}
BIG_MODEL: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
MB = 1024 * 1024


def _models(root: Path) -> tuple[Path, Path]:
    from kubetune_trainer.assets.sample_data import (
        chat_rows,
        corpus_from_rows,
        count_prompt_rows,
        preference_rows,
        prompt_completion_rows,
    )
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    corpus = default_corpus() + corpus_from_rows(
        chat_rows(200, seed=11) + prompt_completion_rows(50, seed=12) + preference_rows(50, seed=13)
    )
    tiny = ensure_tiny_model(
        root / "tiny-llama",
        TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128),
        corpus,
    )
    big_corpus = corpus + corpus_from_rows(count_prompt_rows(200, seed=5))
    big = ensure_tiny_model(root / "llama-25m", TinyModelSpec(seed=5, **BIG_MODEL), big_corpus)
    return tiny, big


def _doc(name: str, model: Path, root: Path, out: Path) -> dict[str, Any]:
    from kubetune_trainer.assets.sample_data import count_prompt_rows, write_jsonl

    train_data = write_jsonl(count_prompt_rows(48, seed=31), root / "prompts.jsonl")
    held_out = write_jsonl(count_prompt_rows(16, seed=32), root / "prompts-eval.jsonl")
    variant = dict(CURVE_VARIANTS.get(name) or MEMORY_VARIANTS[name])
    method = variant.pop("method")
    memory = name in MEMORY_VARIANTS
    rlhf: dict[str, Any] = {
        "reward": {"verifiable": {"check": "regex", "pattern": "[0-9]"}},
        "generation": {"maxNewTokens": 32 if memory else 3},
    }
    rlhf.update(variant.pop("rlhf", {}))
    hyper = {
        "maxSteps": 3 if memory else 40,
        "globalBatchSize": 8,
        "microBatchSize": 4,
        "learningRate": 3e-3,
        "scheduler": "constant",
    }
    return manifest(
        method,
        model,
        train_data,
        out,
        fmt="promptOnly",
        eval_data=None if memory else held_out,
        hyper=hyper,
        dataset={"maxSeqLength": 128},
        rlhf=rlhf,
        **variant,
    )


def run_variant(name: str, root: Path) -> dict[str, Any]:
    """In this (fresh) process: train one variant and summarise it."""
    import torch

    torch.set_num_threads(2)
    tiny, big = _models(root)
    model = big if name in MEMORY_VARIANTS else tiny
    out = root / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    result = train(_doc(name, model, root, out), root / "work" / name)
    seconds = time.perf_counter() - started
    log = train_log(out)
    steps = [r for r in log if "reward/mean" in r]

    def mean(key: str) -> float:
        values = [r[key] for r in steps if key in r]
        return sum(values) / max(len(values), 1)

    return {
        "variant": name,
        "seconds": seconds,
        "steps": len(steps),
        "step_seconds_mean": mean("stepSeconds"),
        "generation_tokens_per_second": mean("generation/tokens_per_second"),
        "generation_time_share": mean("generation/time_share"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        "rss_before_training_mib": rss_before / MB,
        "eval": result.eval_results,
        "curves": {
            key: [r.get(key) for r in steps]
            for key in ("reward/mean", "objective/kl", "objective/kl_coef", "response_length/mean")
        },
    }


def _held_out_reward(model: Any, tokenizer: Any, prompts: list[str]) -> float:
    """One sample per held-out prompt at temperature 1 (as our evaluation), digit reward."""
    import re

    import torch

    torch.manual_seed(1234)
    hits = 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, do_sample=True, max_new_tokens=3, temperature=1.0, top_k=0)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += bool(re.search("[0-9]", text))
    return hits / len(prompts)


def run_trl(name: str, root: Path) -> dict[str, Any]:
    """In this (fresh) process: TRL's GRPOTrainer with the same task and batch shape."""
    import re

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from kubetune_trainer.assets.sample_data import count_prompt_rows

    torch.set_num_threads(2)
    tiny, _ = _models(root)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny)
    held_out = [r["prompt"] for r in count_prompt_rows(16, seed=32)]
    base_reward = _held_out_reward(model, tokenizer, held_out)
    train_set = Dataset.from_list([{"prompt": r["prompt"]} for r in count_prompt_rows(48, seed=31)])

    def digit(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if re.search("[0-9]", c) else 0.0 for c in completions]

    args = GRPOConfig(
        output_dir=str(root / "runs" / name),
        per_device_train_batch_size=32,  # 8 prompts x 4 samples, one update per batch
        num_generations=4,
        max_completion_length=3,
        max_steps=40,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=42,
        **TRL_VARIANTS[name],
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainer = GRPOTrainer(
        model=model, reward_funcs=digit, args=args, train_dataset=train_set,
        processing_class=tokenizer,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    steps = [h for h in trainer.state.log_history if "reward" in h]
    tuned_reward = _held_out_reward(trainer.model, tokenizer, held_out)
    completion_tokens = 3
    return {
        "variant": name,
        "seconds": seconds,
        "steps": len(steps),
        # TRL's own per-step timer (generation, scoring, update), like our stepSeconds
        "step_seconds_mean": sum(h.get("step_time", 0.0) for h in steps) / max(len(steps), 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        "rss_before_training_mib": rss_before / MB,
        "eval": {"base": {"reward_mean": base_reward}, "tuned": {"reward_mean": tuned_reward}},
        "curves": {
            "reward/mean": [h["reward"] for h in steps],
            # TRL logs the per-token mean KL; x tokens per completion = ours (per response)
            "objective/kl": [h.get("kl", 0.0) * completion_tokens for h in steps],
        },
        "generation_tokens_per_second": None,
        "generation_time_share": None,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_reward, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6))
    for res in results:
        if res["variant"] not in CURVE_VARIANTS and res["variant"] not in TRL_VARIANTS:
            continue
        if "curves" not in res:
            continue
        xs = list(range(1, res["steps"] + 1))
        ax_reward.plot(xs, res["curves"]["reward/mean"], label=res["variant"])
        ax_kl.plot(xs, res["curves"]["objective/kl"], label=res["variant"])
    ax_reward.set(title="reward/mean (training samples)", xlabel="RL step", ylim=(0, 1.05))
    ax_kl.set(title="objective/kl to the reference (nats)", xlabel="RL step")
    for ax in (ax_reward, ax_kl):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant")
    parser.add_argument("--only", help="comma-separated variants")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    root = CACHE / "rl"
    root.mkdir(parents=True, exist_ok=True)
    if args.variant:
        run = run_trl if args.variant in TRL_VARIANTS else run_variant
        print(json.dumps(run(args.variant, root)))
        return
    every = [*CURVE_VARIANTS, *TRL_VARIANTS, *MEMORY_VARIANTS]
    names = args.only.split(",") if args.only else every
    results = []
    for name in names:
        env = dict(os.environ, OMP_NUM_THREADS="2", KUBETUNE_METRICS="on")
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", name],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            results.append({"variant": name, "error": proc.stderr[-2000:]})
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        base = res["eval"].get("base", {}).get("reward_mean")
        tuned = res["eval"].get("tuned", {}).get("reward_mean")
        print(
            f"{name}: {res['seconds']:.1f}s, {res['step_seconds_mean']:.3f} s/step, "
            f"eval reward {base} -> {tuned}, gen share "
            f"{res['generation_time_share']}, peak RSS {res['peak_rss_mib']:.0f} MiB"
        )
    args.out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=2)
    )
    plot(results, HERE / "curves.png")


if __name__ == "__main__":
    main()
