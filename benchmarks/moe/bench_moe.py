"""MoE fine-tuning benchmark: where the trainable weights go, and what it does to routing.

Variants (all on one tiny Qwen3-MoE-style model: vocab 768, hidden 128, 4 layers, 8
experts, top 2, random weights with a decisive router; 240 sample chat rows, 24 held-out;
40 optimizer steps of 8 rows, micro-batch 4, padding-free; 1 process, 2 threads; seed 0):

* ``lora-all-linear``: LoRA r=8 on attention + the fused expert tensors (kubetune's
  MoE-aware all-linear; router excluded), learning rate 2e-3;
* ``lora-attention``: LoRA r=8 on q/k/v/o only (what PEFT's all-linear reached on a fused
  MoE before), 2e-3;
* ``lora-experts``: LoRA r=8 on the expert tensors only (``targetModules: [experts]``), 2e-3;
* ``full-selective``: expert-specialised full fine-tuning (``moe.trainExperts``) of the 2
  experts the base routes the most training tokens to (measured first, ESFT-style), 1e-3;
* ``full``: every weight, 1e-3 (the reference point).

Every run keeps the load-balancing loss at 0.01. Reported: trainable parameters, training
loss (mean of the last 5 steps), held-out loss before/after, median tokens/s, and the
final expert load (busiest expert's share per layer, averaged; routing entropy, mean).

    python benchmarks/moe/bench_moe.py          # writes benchmarks/moe/results.json
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STEPS = 40
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


def build(root: Path) -> tuple[Path, Path, Path]:
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import default_corpus
    from kubetune_trainer.models.tiny_moe import TinyMoeSpec, build_tiny_moe_model

    train, held_out = root / "train.jsonl", root / "eval.jsonl"
    write_jsonl(chat_rows(240, seed=21, max_items=8), train)
    write_jsonl(chat_rows(24, seed=22, max_items=8), held_out)
    corpus = default_corpus() + corpus_from_rows(chat_rows(300, seed=23))
    spec = TinyMoeSpec(
        family="qwen3_moe",
        vocab_size=768,
        hidden_size=128,
        expert_intermediate_size=128,
        num_experts=8,
        num_hidden_layers=4,
        router_aux_loss_coef=0.01,
    )
    return build_tiny_moe_model(root / "model", spec, corpus), train, held_out


def busiest_experts(model_dir: Path, train: Path, count: int) -> list[int]:
    """ESFT's selection: the experts the base routes the most training tokens to."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.moe.layout import find_layout
    from kubetune_trainer.moe.routing import RoutingRecorder

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    layout = find_layout(model)
    assert layout is not None
    recorder = RoutingRecorder(model, layout)
    rows = [json.loads(line) for line in train.read_text().splitlines()[:64]]
    for row in rows:
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        ids = tokenizer(text, return_tensors="pt").input_ids[:, :256]
        with recorder.capture():
            model(input_ids=ids)
        recorder.take_aux_loss(1.0)
    stats = recorder.finish_step(recorder.step_totals())
    assert stats is not None
    share = stats.mean_share
    return sorted(sorted(range(len(share)), key=lambda e: -share[e])[:count])


def run(name: str, method: str, extra: dict[str, Any], lr: float, paths: Any, work: Path) -> dict:
    from tests.trainer.helpers import manifest, train_in_process, train_log

    model, train, held_out = paths
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    doc = manifest(
        method,
        model,
        train,
        "chat",
        out,
        eval_data=held_out,
        name=f"bench-{name}",
        hyper={
            "maxSteps": STEPS,
            "globalBatchSize": 8,
            "microBatchSize": 4,
            "learningRate": lr,
            "warmupRatio": 0.05,
            "scheduler": "constant_with_warmup",
        },
        dataset={"packing": True},
        **extra,
    )
    started = time.perf_counter()
    result = train_in_process(doc, work)
    wall = time.perf_counter() - started
    log = train_log(out)
    prom = (out / "metrics.prom").read_text()
    trainable = next(
        float(line.split()[-1])
        for line in prom.splitlines()
        if line.startswith("kubetune_trainer_trainable_parameters ")
    )
    last = log[-1]
    ev = result.eval_results
    return {
        "variant": name,
        "trainableParameters": int(trainable),
        "trainLossLast5": statistics.mean(r["loss"] for r in log[-5:]),
        "trainLossFirst": log[0]["loss"],
        "evalLossBase": ev["base"]["loss"],
        "evalLossTuned": ev["tuned"]["loss"],
        "tokensPerSecondMedian": statistics.median(r["tokensPerSecond"] for r in log[2:]),
        "maxExpertShareMean": statistics.mean(last["moe/maxExpertTokenShare"]),
        "routingEntropyMean": statistics.mean(last["moe/routingEntropy"]),
        "auxLossLast": last["moe/auxLoss"],
        "expertShareFinal": last["moe/expertTokenShare"],
        "wallSeconds": wall,
    }


def _lora(targets: list[str]) -> dict[str, Any]:
    return {"peft": {"lora": {**LORA, "targetModules": targets}}}


def main() -> None:
    import torch

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="kubetune-bench-moe-"))
    try:
        paths = build(work)
        selected = busiest_experts(paths[0], paths[1], 2)
        attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
        variants = [
            ("lora-all-linear", "lora", _lora(["all-linear"]), 2e-3),
            ("lora-attention", "lora", _lora(attention), 2e-3),
            ("lora-experts", "lora", _lora(["experts"]), 2e-3),
            ("full-selective", "full", {"moe": {"trainExperts": selected}}, 1e-3),
            ("full", "full", {}, 1e-3),
        ]
        results = []
        for name, method, extra, lr in variants:
            row = run(name, method, extra, lr, paths, work)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "expertShareFinal"}), flush=True)
        doc = {
            "settings": {
                "model": "qwen3_moe tiny: vocab 768, hidden 128, 4 layers, 8 experts, top 2",
                "steps": STEPS,
                "globalBatchSize": 8,
                "microBatchSize": 4,
                "routerAuxLossCoef": 0.01,
                "selectedExperts": selected,
                "threads": 2,
                "torch": torch.__version__,
            },
            "results": results,
        }
        (HERE / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
