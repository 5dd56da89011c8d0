"""Memory: full fine-tuning vs. LoRA vs. prefix vs. prompt tuning vs. bottleneck adapters.

Same ~25M-parameter Llama-style model, same batch (4 chat samples, padded: packing off
for all methods so the activations are comparable), AdamW. Two measurements:

1. Tracked allocations, in this process, after one optimizer step of each method:
   weights, gradients, optimizer state (summed over the tensors that exist) and the
   activations autograd saves for backward (summed with a saved-tensors hook).
2. RSS of a fresh trainer process (``python -m kubetune_trainer``, 3 steps) per
   method: right before the first step and the peak while steps run (sampled every
   5 ms). The process baseline (~0.75 GiB: torch, transformers, PEFT, the model) is
   the same for all methods; the increase during training is what the method costs.

    python benchmarks/trainer/memory.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import CACHE, manifest, save_results

MODEL_SPEC: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full"},
    "lora": {"method": "lora", "peft": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0}}},
    "prefix": {"method": "prefix", "peft": {"prefix": {"numVirtualTokens": 20}}},
    "prompt": {"method": "prompt", "peft": {"prompt": {"numVirtualTokens": 20}}},
    "adapter": {"method": "adapter", "peft": {"adapter": {"bottleneckSize": 64}}},
}
MB = 1024 * 1024


def setup(root: Path) -> tuple[Path, Path]:
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    data = write_jsonl(chat_rows(64, seed=77, max_items=40), root / "chat.jsonl")
    corpus = default_corpus() + corpus_from_rows(chat_rows(400, seed=7, max_items=60))
    model = ensure_tiny_model(root / "model-25m", TinyModelSpec(seed=5, **MODEL_SPEC), corpus)
    return model, data


def _doc(name: str, model: Path, data: Path, out: Path) -> dict[str, Any]:
    spec = dict(METHODS[name])
    method = spec.pop("method")
    return manifest(
        method,
        model,
        data,
        out,
        hyper={"maxSteps": 3, "globalBatchSize": 4, "microBatchSize": 4, "learningRate": 1e-4},
        dataset={"packing": False, "maxSeqLength": 512},
        **spec,
    )


def tracked(name: str, model_dir: Path, data: Path, work: Path) -> dict[str, float]:
    """Bytes of weights, grads, optimizer state and saved activations after one step."""
    import torch

    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune_trainer.config import parse_document
    from kubetune_trainer.data.batching import collate
    from kubetune_trainer.data.validate import prepare_data
    from kubetune_trainer.distributed.env import DistEnv
    from kubetune_trainer.distributed.strategy import LocalEngine
    from kubetune_trainer.methods.registry import get_method
    from kubetune_trainer.models.load import load_tokenizer

    doc = _doc(name, model_dir, data, work / "out")
    cfg = parse_document(
        resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1).model_dump_json(
            by_alias=True
        )
    )
    tokenizer = load_tokenizer(model_dir)
    examples = prepare_data(cfg, tokenizer).train.examples
    method = get_method(cfg)
    torch.manual_seed(0)
    model = method.build(model_dir, tokenizer, torch.float32)
    env = DistEnv(0, 1, 0, torch.device("cpu"), None)
    engine = LocalEngine(
        model, env, "fp32", cfg, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    )
    batch = collate(
        examples[:4], padding_free=False, pad_token_id=tokenizer.pad_token_id, dummy=examples[0]
    )
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    engine.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method.loss(engine.forward, engine.model, batch)
    engine.backward(out.loss_sum / max(out.count, 1.0), True)
    engine.clip_gradients(1.0)
    engine.optimizer_step()
    params = list(model.parameters())
    weight_ptrs = {p.untyped_storage().data_ptr() for p in params}
    optimizer_bytes = sum(
        v.numel() * v.element_size()
        for state in engine.optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )
    trainable = [p for p in params if p.requires_grad]
    return {
        "parameters": float(sum(p.numel() for p in params)),
        "trainable_parameters": float(sum(p.numel() for p in trainable)),
        "weights_bytes": float(sum(p.numel() * p.element_size() for p in params)),
        # grads live until zero_grad(set_to_none) each step: as large as the trainable set
        "gradient_bytes": float(sum(p.numel() * p.element_size() for p in trainable)),
        "optimizer_state_bytes": float(optimizer_bytes),
        "activation_bytes": float(sum(b for ptr, b in saved.items() if ptr not in weight_ptrs)),
    }


def process_rss(name: str, model_dir: Path, data: Path, work: Path) -> dict[str, float]:
    """RSS of a fresh trainer process: before the first step and peak during training."""
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    out = work / "out-subprocess"
    shutil.rmtree(out, ignore_errors=True)
    doc = _doc(name, model_dir, data, out)
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
        }
    )
    child = Path(__file__).with_name("_rss_child.py")
    proc = subprocess.run([sys.executable, str(child)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "rss_before_training_bytes": float(record["before_training"]),
        "peak_rss_training_bytes": float(record["peak_during_training"]),
        "training_rss_increase_bytes": float(
            record["peak_during_training"] - record["before_training"]
        ),
    }


def main() -> None:
    root = CACHE / "memory"
    model, data = setup(root)
    results: dict[str, dict[str, float]] = {}
    for name in METHODS:
        work = root / f"work-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        results[name] = tracked(name, model, data, work)
        results[name].update(process_rss(name, model, data, work))
        r = results[name]
        print(
            f"{name:>8}: trainable {r['trainable_parameters'] / 1e6:7.3f}M  weights "
            f"{r['weights_bytes'] / MB:6.1f} MiB  grads {r['gradient_bytes'] / MB:6.1f}  optimizer "
            f"{r['optimizer_state_bytes'] / MB:6.1f}  "
            f"activations {r['activation_bytes'] / MB:6.1f}  "
            f"RSS +{r['training_rss_increase_bytes'] / MB:5.0f} MiB during training "
            f"(peak {r['peak_rss_training_bytes'] / MB:5.0f} MiB)",
            flush=True,
        )
    path = save_results(
        "memory", {"model": MODEL_SPEC, "batch": "4 chat samples, padded", "methods": results}
    )
    print(path)


if __name__ == "__main__":
    main()
