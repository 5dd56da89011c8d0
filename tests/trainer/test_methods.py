"""Every method trains a few CPU steps, improves, saves, and reloads to the same outputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer.config import load_job
from kubetune_trainer.methods.registry import get_method
from tests.trainer.helpers import manifest, read_json, train_in_process

CASES: dict[str, dict[str, Any]] = {
    "full": {"hyper": {"learningRate": 2e-3}},
    "lora": {
        "hyper": {"learningRate": 1e-2},
        "peft": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    },
    "dora": {
        "method": "lora",
        "hyper": {"learningRate": 1e-2},
        "peft": {
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "useDora": True,
                "targetModules": ["q_proj", "v_proj", "down_proj"],
            }
        },
    },
    "prefix": {"hyper": {"learningRate": 3e-2}, "peft": {"prefix": {"numVirtualTokens": 8}}},
    "prompt": {
        "hyper": {"learningRate": 5e-2},
        "peft": {
            "prompt": {
                "numVirtualTokens": 8,
                "init": "text",
                "initText": "Answer with the result only",
            }
        },
    },
    "adapter": {"hyper": {"learningRate": 5e-3}, "peft": {"adapter": {"bottleneckSize": 16}}},
    "adapter-houlsby": {
        "method": "adapter",
        "hyper": {"learningRate": 5e-3},
        "peft": {"adapter": {"bottleneckSize": 16, "placement": "houlsby"}},
    },
    "dpo": {"fmt": "preference", "hyper": {"learningRate": 1e-3}, "rlhf": {"dpo": {"beta": 0.5}}},
    "reward": {"fmt": "preference", "hyper": {"learningRate": 1e-3}},
}


def _files(data_dir: Path, fmt: str) -> tuple[Path, Path]:
    if fmt == "preference":
        return data_dir / "pref.jsonl", data_dir / "pref.jsonl"
    return data_dir / "chat.jsonl", data_dir / "chat.jsonl"


def _sample_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        ["Sort these numbers: 5 3 9", "Reverse these words: lamp cloud"],
        return_tensors="pt",
        padding=True,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_saves_and_reloads(
    case: str, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    spec = dict(CASES[case])
    method = spec.pop("method", case)
    fmt = spec.pop("fmt", "chat")
    hyper = {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, **spec.pop("hyper")}
    train, evaluation = _files(data_dir, fmt)
    out = tmp_path / "out"
    doc = manifest(method, tiny_model, train, fmt, out, eval_data=evaluation, hyper=hyper, **spec)
    result = train_in_process(doc, tmp_path)

    assert result.steps == 8
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    results = read_json(out / "eval_results.json")
    base, tuned = results["base"], results["tuned"]
    assert tuned["loss"] < base["loss"], f"{case} did not improve: {base} -> {tuned}"
    if method == "dpo":
        assert base["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at start
        assert tuned["reward_accuracy"] > 0.5
    assert (out / "README.md").exists() and (out / "lineage.json").exists()

    # save -> load into a fresh base -> same outputs as the trained model in memory
    cfg = load_job(tmp_path / "job.json")
    impl = get_method(cfg)
    reloaded = impl.load_trained(tiny_model, out).eval()
    trained = result.model.eval()
    from transformers import AutoTokenizer

    inputs = _sample_inputs(AutoTokenizer.from_pretrained(out))
    with torch.no_grad():
        expected = trained(**inputs).logits
        actual = reloaded(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and the weights really moved away from the base model
        base_model = impl.load_trained(tiny_model, out)
        if hasattr(base_model, "disable_adapter"):
            with base_model.disable_adapter():
                untouched = base_model(**inputs).logits
            tail = expected[:, -untouched.shape[1] :]  # prompt tuning adds virtual positions
            assert not torch.allclose(untouched, tail, atol=1e-5)


def test_lora_merged_export_matches_adapter(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 3, "learningRate": 1e-2},
        peft={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    )
    doc["spec"]["output"]["mergeAdapter"] = True
    result = train_in_process(doc, tmp_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    inputs = _sample_inputs(AutoTokenizer.from_pretrained(out / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**inputs).logits, result.model.eval()(**inputs).logits, rtol=1e-4, atol=1e-4
        )


def test_qlora_on_cpu_is_unsupported(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    from kubetune.contract import ExitCode
    from tests.trainer.helpers import run_trainer, write_config

    out = tmp_path / "out"
    doc = manifest("qlora", tiny_model, data_dir / "chat.jsonl", "chat", out)
    proc = run_trainer(write_config(doc, tmp_path / "job.json"), out)
    assert proc.returncode == ExitCode.UNSUPPORTED, proc.stderr[-2000:]
    assert "CUDA" in proc.stderr


@pytest.mark.gpu
def test_qlora_trains_on_gpu(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "out"
    doc = manifest(
        "qlora",
        tiny_model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 3, "learningRate": 1e-3},
    )
    result = train_in_process(doc, tmp_path)
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert (out / "adapter_model.safetensors").exists()


class MlpCalls:
    """Calls of every decoder layer's MLP while training, split by whether they ran inside
    a backward pass (only activation recomputation runs a layer there). A pre-hook of the
    MLP, not a hook of the layer: transformers checkpoints the layer's ``forward`` (its
    hooks stay outside the checkpoint), and torch stops a recomputation as soon as the last
    saved tensor is back, inside the MLP, so post-forward hooks would not run either."""

    def __init__(self) -> None:
        self.in_forward = 0
        self.in_backward = 0
        self._backward_depth = 0

    def pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if not type(module).__name__.endswith("MLP") or not module.training:
            return
        if self._backward_depth:
            self.in_backward += 1
        elif torch.is_grad_enabled():
            self.in_forward += 1

    def watch_backward(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Tensor.backward (every engine's backward ends there) calls torch.autograd.backward
        real = torch.autograd.backward

        def backward(*args: Any, **kwargs: Any) -> None:
            self._backward_depth += 1
            try:
                real(*args, **kwargs)
            finally:
                self._backward_depth -= 1

        monkeypatch.setattr(torch.autograd, "backward", backward)


GC_CASES: dict[str, dict[str, Any]] = {
    "full": {},
    "lora": {"peft": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}},
    "adapter": {"peft": {"adapter": {"bottleneckSize": 8}}},
    "prompt": {"peft": {"prompt": {"numVirtualTokens": 4}}},
    "dpo": {"fmt": "preference", "rlhf": {"dpo": {"beta": 0.5}}},
    "reward": {"fmt": "preference"},
}


@pytest.mark.parametrize(
    ("case", "checkpointing"),
    [(case, True) for case in GC_CASES] + [("lora", False), ("dpo", False)],
)
def test_gradient_checkpointing_recomputes_every_layer(
    case: str,
    checkpointing: bool,
    tiny_model: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``gradientCheckpointing`` every decoder layer runs again during backward (its
    activations were dropped and are recomputed); without it, never. Goes through the
    whole loop, so a method that forgets to enable checkpointing fails here."""
    spec = dict(GC_CASES[case])
    fmt = spec.pop("fmt", "chat")
    train, _ = _files(data_dir, fmt)
    hyper = {"maxSteps": 1, "globalBatchSize": 4, "microBatchSize": 2}
    if checkpointing:
        hyper["gradientCheckpointing"] = True
    doc = manifest(case, tiny_model, train, fmt, tmp_path / "out", hyper=hyper, **spec)
    calls = MlpCalls()
    calls.watch_backward(monkeypatch)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(calls.pre_hook)
    try:
        train_in_process(doc, tmp_path)
    finally:
        handle.remove()
    layers = read_json(tiny_model / "config.json")["num_hidden_layers"]
    assert calls.in_forward == 2 * layers  # 2 micro-batches of the one step
    assert calls.in_backward == (calls.in_forward if checkpointing else 0)


def test_gradient_checkpointing_and_bf16_autocast(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Checkpointing recomputes, it does not change the maths; bf16 autocast runs on CPU."""
    losses = {}
    for name, hyper in {
        "plain": {},
        "checkpointed": {"gradientCheckpointing": True},
        "bf16": {"precision": "bf16"},
    }.items():
        work = tmp_path / name
        work.mkdir()
        doc = manifest(
            "lora",
            tiny_model,
            data_dir / "chat.jsonl",
            "chat",
            work / "out",
            hyper={"maxSteps": 2, "learningRate": 1e-2, **hyper},
            peft={"lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        )
        result = train_in_process(doc, work)
        losses[name] = [r["loss"] for r in read_json_lines(work / "out" / "train_log.jsonl")]
        assert all(math.isfinite(x) for x in losses[name])
        if name == "bf16":
            assert read_json(work / "out" / "lineage.json")["training"]["precision"] == "bf16"
        del result
    assert losses["checkpointed"] == pytest.approx(losses["plain"], rel=1e-5)
    assert losses["bf16"] == pytest.approx(losses["plain"], rel=0.05)  # bf16 rounding only


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_qwen2_style_tiny_model_trains(data_dir: Path, tmp_path: Path) -> None:
    """The Qwen2 builder (tied embeddings) produces a model the trainer can fine-tune."""
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows
    from kubetune_trainer.models.tiny import TinyModelSpec, build_tiny_model, default_corpus

    model = build_tiny_model(
        tmp_path / "qwen",
        TinyModelSpec(family="qwen2", vocab_size=384, tie_word_embeddings=True),
        default_corpus() + corpus_from_rows(chat_rows(100, seed=3)),
    )
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        model,
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={"maxSteps": 3, "learningRate": 1e-2},
        peft={"lora": {"r": 4, "alpha": 8}},
    )
    result = train_in_process(doc, tmp_path)
    assert read_json(model / "config.json")["model_type"] == "qwen2"
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert (out / "adapter_model.safetensors").exists()


def test_lm_loss_reports_per_example_sums_for_evaluation(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Under no_grad the LM objective's per-sequence NLL sums and token counts add up to the
    micro-batch's loss and count, padded or packed alike (the held-out intervals use them);
    while training (grad on) it spends nothing on them."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.data.batching import collate
    from kubetune_trainer.data.encode import IGNORE, Encoded, EncodedSample
    from tests.trainer.helpers import write_config

    doc = manifest("full", tiny_model, data_dir / "chat.jsonl", "chat", tmp_path / "out")
    method = get_method(load_job(write_config(doc, tmp_path / "job.json")))
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    samples: list[Encoded] = [
        EncodedSample(list(range(5, 14)), [IGNORE] * 3 + list(range(8, 14))),
        EncodedSample(list(range(20, 24)), [IGNORE] * 4),  # no targets at all
        EncodedSample(list(range(30, 47)), [IGNORE] * 5 + list(range(35, 47))),
    ]
    per_layout = []
    for padding_free in (False, True):
        batch = collate(samples, padding_free=padding_free, pad_token_id=0, dummy=samples[0])
        with torch.no_grad():
            out = method.loss(model, model, batch)
        assert out.per_example is not None
        assert out.per_example.tokens.tolist() == [6.0, 0.0, 12.0]
        torch.testing.assert_close(out.per_example.nll.sum(), out.loss_sum)
        assert float(out.per_example.tokens.sum()) == out.count
        assert out.per_example.nll[1] == 0.0 and bool((out.per_example.nll[[0, 2]] > 0).all())
        per_layout.append(out.per_example.nll)
        assert method.loss(model, model, batch).per_example is None  # grad on: training
    torch.testing.assert_close(per_layout[0], per_layout[1], rtol=1e-5, atol=1e-4)
    empty = collate([], padding_free=True, pad_token_id=0, dummy=samples[0])
    with torch.no_grad():
        dummy = method.loss(model, model, empty).per_example
    assert dummy is not None and float(dummy.tokens.sum()) == 0.0
