"""Quality: eval-loss improvement of each PEFT method as a fraction of full fine-tuning's.

A randomly initialised model has nothing to adapt, so the base model is first
pre-trained briefly, offline, on text every Python install ships: the docstrings of
the standard library (cached after the first run). It is then fine-tuned on a chat task
it has never seen (the synthetic instruction tasks of ``sample_data``: spell out
numbers, reverse or sort lists, count words) with each method, same data, same steps,
and a per-method learning rate picked from a small sweep on the same budget. Reported:
eval loss (assistant tokens) before and after, and each method's improvement as a
fraction of full fine-tuning's.

    python benchmarks/trainer/quality.py [--steps 60]
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results, train

MODEL_SPEC: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}
# method -> (extra spec, learning rates tried)
METHODS: dict[str, tuple[dict[str, Any], list[float]]] = {
    "full": ({}, [3e-4, 1e-3]),
    "lora": ({"peft": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}}, [3e-3, 1e-2]),
    "adapter": ({"peft": {"adapter": {"bottleneckSize": 64}}}, [3e-3, 1e-2]),
    "prefix": ({"peft": {"prefix": {"numVirtualTokens": 20}}}, [3e-2, 1e-1]),
    "prompt": ({"peft": {"prompt": {"numVirtualTokens": 20}}}, [1e-1, 3e-1]),
}


def stdlib_docstrings(limit_chars: int = 1_500_000) -> list[str]:
    """Docstrings of the standard library, split into paragraphs (offline text)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for file in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in file.parts or "idlelib" in file.parts:
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                for para in doc.split("\n\n"):
                    para = " ".join(para.split())
                    if 40 <= len(para) <= 1200:
                        texts.append(para)
                        total += len(para)
        if total >= limit_chars:
            break
    return texts


def pretrained_base(root: Path, steps: int) -> Path:
    """A tiny Llama pre-trained on stdlib docstrings; built once and cached."""
    from kubetune_trainer.assets.sample_data import write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, ensure_tiny_model

    final = root / f"base-pretrained-{steps}"
    if (final / "config.json").exists():
        return final
    texts = stdlib_docstrings()
    random_init = ensure_tiny_model(
        root / "base-random", TinyModelSpec(seed=11, **MODEL_SPEC), texts[:20000]
    )
    corpus = write_jsonl(({"text": t} for t in texts), root / "stdlib-docstrings.jsonl")
    work = root / "pretrain"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    doc = manifest(
        "full",
        random_init,
        corpus,
        out,
        fmt="text",
        hyper={
            "maxSteps": steps,
            "globalBatchSize": 32,
            "microBatchSize": 32,
            "learningRate": 2e-3,
            "warmupRatio": 0.05,
            "weightDecay": 0.01,
        },
        dataset={"maxSeqLength": 256},
    )
    result = train(doc, work)
    print(
        f"pre-trained the base on {len(texts)} docstring paragraphs: loss {result.final_loss:.3f}"
    )
    staging = root / ".base-staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(
        out, staging, ignore=shutil.ignore_patterns("checkpoints", "*.jsonl", "*.json.tmp*")
    )
    staging.rename(final)
    return final


def task_data(root: Path) -> tuple[Path, Path]:
    from kubetune_trainer.assets.sample_data import chat_rows, write_jsonl

    train_file = write_jsonl(chat_rows(800, seed=501, max_items=12), root / "task-train.jsonl")
    eval_file = write_jsonl(chat_rows(120, seed=502, max_items=12), root / "task-eval.jsonl")
    return train_file, eval_file


def finetune(
    name: str, lr: float, base: Path, data: tuple[Path, Path], root: Path, steps: int
) -> dict[str, Any]:
    extra, _ = METHODS[name]
    work = root / f"ft-{name}-{lr:g}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    doc = manifest(
        name,
        base,
        data[0],
        out,
        eval_data=data[1],
        hyper={
            "maxSteps": steps,
            "globalBatchSize": 16,
            "microBatchSize": 16 if name not in ("prefix", "prompt") else 8,
            "learningRate": lr,
            "warmupRatio": 0.05,
            "weightDecay": 0.0,
        },
        dataset={"maxSeqLength": 512},
        **extra,
    )
    result = train(doc, work)
    evaluation = json.loads((out / "eval_results.json").read_text())
    trainable = float(sum(p.numel() for p in result.model.parameters() if p.requires_grad))
    return {
        "learning_rate": lr,
        "base_loss": evaluation["base"]["loss"],
        "tuned_loss": evaluation["tuned"]["loss"],
        "improvement": evaluation["base"]["loss"] - evaluation["tuned"]["loss"],
        "trainable_parameters": trainable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    args = parser.parse_args()
    root = CACHE / "quality"
    root.mkdir(parents=True, exist_ok=True)
    base = pretrained_base(root, args.pretrain_steps)
    data = task_data(root)
    best: dict[str, dict[str, Any]] = {}
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for name, (_, rates) in METHODS.items():
        sweeps[name] = [finetune(name, lr, base, data, root, args.steps) for lr in rates]
        best[name] = min(sweeps[name], key=lambda r: r["tuned_loss"])
        b = best[name]
        print(
            f"{name:>8}: eval loss {b['base_loss']:.3f} -> {b['tuned_loss']:.3f} "
            f"(lr {b['learning_rate']:g}, {b['trainable_parameters'] / 1e3:.1f}k trainable)",
            flush=True,
        )
    full = best["full"]["improvement"]
    for name, result in best.items():
        result["fraction_of_full"] = result["improvement"] / full if full > 0 else float("nan")
        print(f"{name:>8}: {result['fraction_of_full']:.0%} of full fine-tuning's improvement")
    path = save_results(
        "quality",
        {
            "model": MODEL_SPEC,
            "pretraining": {
                "corpus": "Python standard library docstrings",
                "steps": args.pretrain_steps,
            },
            "task": "synthetic chat instructions (spell/reverse/sort/count), 800 train / 120 eval",
            "steps": args.steps,
            "global_batch": 16,
            "best": best,
            "sweeps": sweeps,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
