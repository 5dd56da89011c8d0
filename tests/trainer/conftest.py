"""Fixtures of the trainer tests: a tiny model and datasets, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # DeepSpeed would probe for CUDA otherwise; on a GPU
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the gpu-marked tests need cuda
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(here):
            item.add_marker(pytest.mark.trainer)
            if "gpu" in item.keywords and not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.assets.sample_data import (
        chat_rows,
        preference_rows,
        prompt_completion_rows,
        text_rows,
        write_jsonl,
    )

    root = tmp_path_factory.mktemp("data")
    write_jsonl(chat_rows(48, seed=1, max_items=8), root / "chat.jsonl")
    write_jsonl(chat_rows(12, seed=2, max_items=8), root / "chat_eval.jsonl")
    write_jsonl(prompt_completion_rows(32, seed=3, max_items=8), root / "pc.jsonl")
    write_jsonl(text_rows(32, seed=4, max_items=8), root / "text.jsonl")
    write_jsonl(preference_rows(32, seed=5, max_items=6), root / "pref.jsonl")
    write_jsonl(preference_rows(8, seed=6, max_items=6), root / "pref_eval.jsonl")
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A tiny Llama-style model whose tokenizer was trained on the test data."""
    from kubetune_trainer.assets.sample_data import (
        chat_rows,
        corpus_from_rows,
        preference_rows,
        prompt_completion_rows,
    )
    from kubetune_trainer.models.tiny import TinyModelSpec, build_tiny_model, default_corpus

    corpus = default_corpus() + corpus_from_rows(
        chat_rows(200, seed=11) + prompt_completion_rows(50, seed=12) + preference_rows(50, seed=13)
    )
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-llama",
        TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128),
        corpus,
    )
