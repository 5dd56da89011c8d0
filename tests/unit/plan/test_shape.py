"""Model shapes from config.json: parameter counts against the published totals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.plan import ModelShape, ShapeError

CONFIGS = Path(__file__).parent / "configs"

LLAMA2_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}


def test_llama2_7b_counts_its_published_parameters() -> None:
    # 6,738,415,616: the count transformers reports for meta-llama/Llama-2-7b-hf
    assert ModelShape.from_config(LLAMA2_7B).parameters == 6_738_415_616


def test_llama31_8b_from_file_with_grouped_query_attention() -> None:
    shape = ModelShape.from_file(CONFIGS / "llama-3.1-8b.json")
    assert shape.num_kv_heads == 8 and shape.kv_dim == 1024 and shape.head_dim == 128
    assert shape.parameters == 8_030_261_248  # meta-llama/Llama-3.1-8B


def test_mixtral_counts_every_expert() -> None:
    config = {
        **LLAMA2_7B,
        "model_type": "mixtral",
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    }
    shape = ModelShape.from_config(config)
    assert shape.num_experts == 8 and shape.experts_per_token == 2
    assert shape.parameters == pytest.approx(46.7e9, rel=0.005)  # Mixtral-8x7B: 46.7B


def test_tied_embeddings_count_once_and_gpt2_aliases_map() -> None:
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    shape = ModelShape.from_config(gpt2)
    assert shape.tied_embeddings and not shape.gated_mlp and shape.intermediate_size == 3072
    # 124.4M published; biases and position embeddings (~0.9M) are left out
    assert shape.parameters == pytest.approx(124.4e6, rel=0.01)
    untied = ModelShape.from_config({**gpt2, "tie_word_embeddings": False})
    assert untied.parameters - shape.parameters == 50257 * 768


def test_vision_language_config_reads_its_text_part() -> None:
    shape = ModelShape.from_config({"model_type": "llava", "text_config": LLAMA2_7B})
    assert shape.hidden_size == 4096 and shape.num_layers == 32


def test_lora_parameters_of_all_linear_and_of_named_targets() -> None:
    shape = ModelShape.from_config(LLAMA2_7B)
    h, i = 4096, 11008
    per_layer = 4 * (h + h) + 2 * (h + i) + (i + h)
    assert shape.lora_parameters(16, ("all-linear",)) == 16 * 32 * per_layer
    assert shape.lora_parameters(8, ("q_proj", "v_proj")) == 8 * 32 * 2 * (h + h)


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match="no vocab_size"):
        ModelShape.from_config({k: v for k, v in LLAMA2_7B.items() if k != "vocab_size"})
    with pytest.raises(ShapeError, match="must be a count"):
        ModelShape.from_config({**LLAMA2_7B, "hidden_size": "4096"})
    (tmp_path / "config.json").write_text(json.dumps([1]))
    with pytest.raises(ShapeError, match="not a JSON object"):
        ModelShape.from_file(tmp_path)
