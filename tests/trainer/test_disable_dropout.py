"""Dropout is off in the trained model of DPO, KTO, ORPO and reward models, as TRL 1.16's
trainers default to (``disable_dropout=True``), and stays on for SFT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.trainer.helpers import manifest, train_in_process

DROPOUT = 0.1
LORA = {"lora": {"r": 4, "alpha": 8, "dropout": DROPOUT}}
CASES: dict[str, dict[str, Any]] = {
    "dpo": {"fmt": "preference", "rlhf": {"dpo": {"beta": 0.5}}},
    "dpo-lora": {"method": "dpo", "fmt": "preference", "peft": LORA},
    "kto": {"fmt": "unpaired", "rlhf": {"kto": {"beta": 0.5}}},
    "orpo": {"fmt": "preference"},
    "reward": {"fmt": "preference"},
    "lora": {"fmt": "chat", "peft": LORA},  # SFT: TRL's SFTTrainer keeps dropout
}


@pytest.fixture(scope="module")
def dropout_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with attention dropout on (HF applies it functionally, not as a
    module: the part TRL's ``disable_dropout_in_model`` misses)."""
    model = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["attention_dropout"] = DROPOUT
    (model / "config.json").write_text(json.dumps(config))
    return model


def _train_file(data_dir: Path, tmp_path: Path, fmt: str) -> Path:
    if fmt == "unpaired":
        from kubetune_trainer.assets.sample_data import unpaired_rows, write_jsonl

        return write_jsonl(unpaired_rows(8, seed=7, max_items=5), tmp_path / "kto.jsonl")
    return data_dir / ("pref.jsonl" if fmt == "preference" else "chat.jsonl")


def _dropout_rates(model: nn.Module) -> list[float]:
    rates = [float(m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    rates += [
        float(m.attention_dropout)
        for m in model.modules()
        if isinstance(getattr(m, "attention_dropout", None), float)
    ]
    return rates


@pytest.mark.parametrize("case", list(CASES))
def test_dropout_follows_trl(
    case: str,
    dropout_model: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = dict(CASES[case])
    method = spec.pop("method", case)
    fmt = spec.pop("fmt")
    train = _train_file(data_dir, tmp_path, fmt)
    hyper = {"maxSteps": 1, "globalBatchSize": 4, "microBatchSize": 2}
    doc = manifest(method, dropout_model, train, fmt, tmp_path / "out", hyper=hyper, **spec)

    import kubetune_trainer.trainer as loop

    built: list[nn.Module] = []  # the model exactly as the loop trains it
    real_build_engine = loop.build_engine

    def capture(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        built.append(model)
        return real_build_engine(model, *args, **kwargs)

    monkeypatch.setattr(loop, "build_engine", capture)
    train_in_process(doc, tmp_path)
    (model,) = built
    rates = _dropout_rates(model)
    assert rates, "the model has dropout to turn off"

    model.train()
    ids = torch.tensor([[5, 17, 23, 42, 8, 11, 30, 2]])
    with torch.no_grad():
        first = model(input_ids=ids).logits
        second = model(input_ids=ids).logits
    if case == "lora":  # the control: SFT keeps dropout, so train mode is random
        assert max(rates) == pytest.approx(DROPOUT)
        assert not torch.equal(first, second)
    else:
        assert max(rates) == 0.0, rates
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # deterministic
