"""Vision-language fine-tuning benchmark: the synthetic colour task on the tiny VLM.

Base model vs LoRA vs full fine-tuning (both with the vision tower frozen, the projector
trained), all on the same data and schedule. Settings: the tiny LLaVA-style model of
``models/tiny_vlm.py`` (CLIP tower 32x32 images / 8x8 patches -> 16 image tokens, hidden
32, 2 layers; Llama hidden 64, 2 layers; random weights, seed 0); 192 training rows and
48 eval rows of ``assets/vision_data`` (one solid-colour image of 6 colours + "What colour
is the image?"; answer the colour name); 60 steps of 8 rows (2.5 epochs), constant
learning rate (LoRA r=8 all-linear of the language model: 1e-2; full: 1e-3), seed 42;
1 process, ``torch.set_num_threads(2)``, ``KUBETUNE_METRICS=off``; samples/s from the
median step time. Accuracy: greedy
answer (4 new tokens) equals the colour name, on 60 fresh held-out images (seed 99),
reloading the saved output from disk (adapter into the base; full model).

    python benchmarks/vision/bench_vision.py     # ~1 minute; writes results.json here
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trainer"))
os.environ["KUBETUNE_METRICS"] = "off"

from common import manifest, train, train_log  # noqa: E402

STEPS = 60
VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {
        "learningRate": 1e-2,
        "peft": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}},
    },
    "full": {"learningRate": 1e-3},
}


def run_variant(name: str, model: Path, data: Path, work: Path) -> dict[str, Any]:
    import torch

    from kubetune_trainer.assets import vision_data as vd
    from kubetune_trainer.models.load import load_causal_lm
    from kubetune_trainer.vision.encode import load_processor
    from kubetune_trainer.vision.probe import accuracy

    settings = dict(VARIANTS[name])
    lr = settings.pop("learningRate")
    out = work / name
    doc = manifest(
        name,
        model,
        data / "train.jsonl",
        out,
        fmt="visionChat",
        eval_data=data / "eval.jsonl",
        hyper={
            "maxSteps": STEPS,
            "globalBatchSize": 8,
            "microBatchSize": 8,
            "learningRate": lr,
            "scheduler": "constant",
            "seed": 42,
        },
        dataset={"maxSeqLength": 128},
        vision={"trainVisionTower": False, "trainProjector": True},
        **settings,
    )
    started = time.perf_counter()
    result = train(doc, work / f"{name}-job")
    wall = time.perf_counter() - started
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in result.model.parameters())
    log = train_log(out)
    # the median step: the benchmark machine is shared, single slow steps are noise
    step_seconds = statistics.median(r["stepSeconds"] for r in log)
    processor = load_processor(out)
    if name == "lora":
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(load_causal_lm(model, dtype=torch.float32), out)
    else:
        tuned = load_causal_lm(out, dtype=torch.float32)
    held_out = vd.colour_samples(60, seed=99)
    evals = result.eval_results
    return {
        "accuracy": accuracy(tuned, processor, held_out),
        "eval_loss": round(evals["tuned"]["loss"], 4),
        "base_eval_loss": round(evals["base"]["loss"], 4),
        "first_loss": round(log[0]["loss"], 4),
        "final_loss": round(log[-1]["loss"], 4),
        "trainable_params": trainable,
        "total_params": total,
        "samples_per_second": round(8 / step_seconds, 1),
        "train_wall_seconds": round(wall, 1),
    }


def main() -> None:
    import torch

    torch.set_num_threads(2)
    from kubetune_trainer.assets import vision_data as vd
    from kubetune_trainer.models.load import load_causal_lm
    from kubetune_trainer.models.tiny_vlm import build_tiny_vlm
    from kubetune_trainer.vision.encode import load_processor
    from kubetune_trainer.vision.probe import accuracy

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-vision-") as tmp:
        work = Path(tmp)
        model = build_tiny_vlm(work / "tiny-vlm", vd.corpus())
        data = work / "data"
        vd.write_colour_jsonl(data / "train.jsonl", 192, seed=1)
        vd.write_colour_jsonl(data / "eval.jsonl", 48, seed=2)
        base = load_causal_lm(model, dtype=torch.float32)
        results: dict[str, Any] = {
            "base": {
                "accuracy": accuracy(base, load_processor(model), vd.colour_samples(60, seed=99)),
                "trainable_params": 0,
                "total_params": sum(p.numel() for p in base.parameters()),
            }
        }
        for name in VARIANTS:
            results[name] = run_variant(name, model, data, work)
        results["base"]["eval_loss"] = results["lora"]["base_eval_loss"]
    report = {
        "benchmark": "vision",
        "task": "name the colour of a solid-colour image (6 colours), 60 held-out images",
        "steps": STEPS,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
