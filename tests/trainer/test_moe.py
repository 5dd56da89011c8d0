"""Mixture-of-experts fine-tuning on tiny Mixtral/Qwen2-MoE/Qwen3-MoE models (CPU).

Expert-selective training moves only the chosen experts (weight decay included), a frozen
router stays put, LoRA lands on the expert tensors and not on routers, the balancing loss
is transformers' own and changes the loss, and the expert-load metrics are reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.moe import MoeSpec
from kubetune.api.training import LoraSettings
from kubetune_trainer.errors import InvalidConfigError
from kubetune_trainer.models.tiny_moe import MoeFamily, TinyMoeSpec, build_tiny_moe_model
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log

FAST = {"maxSteps": 3, "globalBatchSize": 4, "microBatchSize": 2, "learningRate": 1e-2}


@pytest.fixture(scope="session")
def moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model per MoE family (shared tokenizer corpus, 4 experts, top 2)."""
    from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows
    from kubetune_trainer.models.tiny import default_corpus

    corpus = default_corpus() + corpus_from_rows(chat_rows(120, seed=11))
    root = tmp_path_factory.mktemp("moe-models")
    families: tuple[MoeFamily, ...] = ("mixtral", "qwen2_moe", "qwen3_moe")
    return {
        family: build_tiny_moe_model(
            root / family, TinyMoeSpec(family=family, vocab_size=384), corpus
        )
        for family in families
    }


def _base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The base as loaded (fused experts: the checkpoint itself is per expert, v4 layout)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(doc: dict[str, Any], tmp_path: Path) -> Any:
    return train_in_process(doc, tmp_path)


def test_expert_selective_training_moves_only_the_chosen_experts(
    moe_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    model = moe_models["mixtral"]
    base = _base_weights(model)
    doc = manifest(
        "full",
        model,
        data_dir / "chat.jsonl",
        "chat",
        tmp_path / "out",
        hyper={**FAST, "weightDecay": 0.1},
        moe={"trainExperts": [1, 3]},
    )
    result = _train(doc, tmp_path)
    tuned = {k: v.detach() for k, v in result.model.state_dict().items()}
    fused = [k for k in base if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(fused) == 4  # 2 layers x (gate_up, down)
    for key in fused:
        for expert in (1, 3):
            assert not torch.equal(tuned[key][expert], base[key][expert]), (key, expert)
        for expert in (0, 2):  # masked gradient AND undone weight decay: bit-identical
            assert torch.equal(tuned[key][expert], base[key][expert]), (key, expert)
    others = [k for k in base if k not in fused]
    assert any("gate.weight" in k for k in others) and any("q_proj" in k for k in others)
    for key in others:  # router, attention, embeddings, norms: untouched
        assert torch.equal(tuned[key], base[key]), key
    log = train_log(tmp_path / "out")
    assert log[-1]["loss"] < log[0]["loss"] + 0.05


def test_frozen_router_stays_while_experts_and_attention_train(
    moe_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    model = moe_models["qwen3_moe"]
    base = _base_weights(model)
    doc = manifest(
        "full",
        model,
        data_dir / "chat.jsonl",
        "chat",
        tmp_path / "out",
        hyper={**FAST, "maxSteps": 2},
        moe={"freezeRouter": True},
    )
    tuned = _train(doc, tmp_path).model.state_dict()
    routers = [k for k in base if k.endswith("mlp.gate.weight")]
    assert len(routers) == 2
    for key in routers:
        assert torch.equal(tuned[key], base[key]), key
    moved = [k for k in base if not torch.equal(tuned[k], base[k])]
    assert any("experts.gate_up_proj" in k for k in moved)
    assert any("self_attn.q_proj" in k for k in moved)


def _adapted(peft_model: Any) -> set[str]:
    """Names of the modules/parameters that received a LoRA A matrix."""
    names = set()
    for name, _ in peft_model.named_parameters():
        if ".lora_A." in name:
            names.add(name.split(".lora_A.")[0].replace("base_model.model.", ""))
    return names


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "qwen3_moe"])
def test_lora_targets_the_expert_tensors_and_never_the_router(
    moe_models: dict[str, Path], family: str
) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.methods.lora import lora_config

    def adapt(targets: list[str]) -> Any:
        base = AutoModelForCausalLM.from_pretrained(moe_models[family], dtype=torch.float32)
        settings = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=targets)
        return get_peft_model(base, lora_config(settings, model=base))

    peft_model = adapt(["all-linear"])
    adapted = _adapted(peft_model)
    # fused expert tensors: a ParamWrapper per tensor (nested), on every MoE layer
    experts = {n for n in adapted if n.endswith("mlp.experts") or "mlp.experts.base_layer" in n}
    assert len(experts) == 4, adapted
    targeted = set(peft_model.peft_config["default"].target_parameters)
    assert targeted == {"experts.gate_up_proj", "experts.down_proj"}
    assert any(n.endswith("self_attn.q_proj") for n in adapted)
    assert not any(n.endswith(("mlp.gate", "shared_expert_gate")) for n in adapted), adapted
    # the adapter's update reaches every expert's weights once B is non-zero
    for name, param in peft_model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(param, std=0.1)
    merged = peft_model.merge_and_unload().model.layers[0].mlp.experts
    base = AutoModelForCausalLM.from_pretrained(moe_models[family], dtype=torch.float32)
    before = base.model.layers[0].mlp.experts.gate_up_proj
    assert all(not torch.equal(merged.gate_up_proj[e], before[e]) for e in range(4))

    only = _adapted(adapt(["experts"]))
    assert only and all("mlp.experts" in n for n in only), only
    if family == "qwen2_moe":  # the shared expert is an ordinary MLP: all-linear adapts it
        assert any("shared_expert.up_proj" in n for n in adapted)


def test_aux_loss_is_the_library_loss_and_changes_the_objective(
    moe_models: dict[str, Path],
) -> None:
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.methods.base import LossOutput
    from kubetune_trainer.moe.layout import find_layout
    from kubetune_trainer.moe.training import MoeTraining

    model = AutoModelForCausalLM.from_pretrained(moe_models["qwen3_moe"], dtype=torch.float32)
    layout = find_layout(model)
    assert layout is not None and (layout.num_experts, layout.top_k) == (4, 2)
    moe = MoeTraining(model, layout, MoeSpec(router_aux_loss_coef=0.5))
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding does not count
    with moe.capture():
        out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    nll = torch.tensor(10.0)
    loss = moe.add_aux_loss(LossOutput(nll, 21.0), 21.0)
    assert out.aux_loss is not None
    torch.testing.assert_close(
        (loss.loss_sum - nll) / (0.5 * 21.0), out.aux_loss.float(), rtol=1e-5, atol=1e-6
    )
    assert float(loss.loss_sum) > float(nll) + 0.5 * 21.0  # aux >= 1 for top-2 routing
    stats = moe.finish_step(lambda values: values)
    assert stats is not None and stats.aux_loss == pytest.approx(float(out.aux_loss), rel=1e-5)
    off = MoeTraining(model, layout, MoeSpec(router_aux_loss_coef=0.0))
    with off.capture():
        model(input_ids=ids, attention_mask=mask)
    assert float(off.add_aux_loss(LossOutput(nll, 21.0), 21.0).loss_sum) == 10.0
    moe.recorder.close()
    off.recorder.close()


def test_a_packed_rows_rounding_segment_is_not_routed_or_balanced(
    moe_models: dict[str, Path],
) -> None:
    """The label-free tokens that round a packed row's length count in no routing figure."""
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.data.batching import collate
    from kubetune_trainer.data.encode import IGNORE, EncodedSample
    from kubetune_trainer.methods.base import LossOutput
    from kubetune_trainer.models.varlen_attention import register_varlen_attention
    from kubetune_trainer.moe.layout import find_layout
    from kubetune_trainer.moe.training import MoeTraining

    model = AutoModelForCausalLM.from_pretrained(
        moe_models["qwen3_moe"],
        dtype=torch.float32,
        attn_implementation=register_varlen_attention(),
    )
    layout = find_layout(model)
    assert layout is not None
    g = torch.Generator().manual_seed(3)
    samples = [
        EncodedSample(ids, [IGNORE, *ids[1:]])
        for ids in (torch.randint(5, 300, (n,), generator=g).tolist() for n in (11, 7))
    ]

    def routed(multiple: int) -> tuple[list[float], float]:
        batch = collate(
            samples,
            padding_free=True,
            pad_token_id=0,
            dummy=samples[0],
            pad_to_multiple_of=multiple,
        )
        moe = MoeTraining(model, layout, MoeSpec(router_aux_loss_coef=1.0))
        with moe.capture():
            model(**batch.inputs, use_cache=False)
        aux = moe.add_aux_loss(LossOutput(torch.tensor(0.0), 1.0), 1.0).loss_sum
        totals = moe.recorder.step_totals()
        moe.recorder.close()
        return totals, float(aux)

    exact, rounded = routed(1), routed(64)
    layers = len(layout.layers)
    rows = rounded[0][-2 - layers : -2]  # step_totals: counts, entropy, rows, aux sums
    assert rows == [18.0] * layers  # the 18 real tokens, not the 64 of the rounded row
    assert rounded[0] == pytest.approx(exact[0], rel=1e-5)  # counts, entropy, rows
    assert rounded[1] == pytest.approx(exact[1], rel=1e-5)  # the load-balancing loss


def test_lora_on_experts_trains_and_reports_expert_load(
    moe_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        "lora",
        moe_models["qwen2_moe"],
        data_dir / "chat.jsonl",
        "chat",
        out,
        hyper={**FAST, "maxSteps": 6, "learningRate": 2e-2},
        peft={"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["experts"]}},
        moe={"routerAuxLossCoef": 0.01},
    )
    _train(doc, tmp_path)
    log = train_log(out)
    assert log[-1]["loss"] < log[0]["loss"] - 0.1
    for record in log:
        share = record["moe/expertTokenShare"]
        assert len(share) == 4 and sum(share) == pytest.approx(1.0, abs=1e-5)
        assert all(0 <= e <= math.log(4) for e in record["moe/routingEntropy"])
        assert all(0.25 <= m <= 0.5 for m in record["moe/maxExpertTokenShare"])  # top-2 of 4
        assert record["moe/auxLoss"] >= 1.0
    prom = (out / "metrics.prom").read_text()
    ratios = [
        float(line.split()[-1])
        for line in prom.splitlines()
        if line.startswith("kubetune_trainer_moe_expert_token_ratio{")
    ]
    assert len(ratios) == 4 and sum(ratios) == pytest.approx(1.0, abs=1e-5)
    assert 'kubetune_trainer_moe_routing_entropy_nats{layer="1"}' in prom
    lineage = read_json(out / "lineage.json")
    for row in lineage["moe"]["tokenShare"]:  # per layer
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    card = (out / "README.md").read_text()
    assert "## Expert load" in card and "| mean |" in card


def test_dpo_with_a_lora_policy_on_experts_learns_and_reports_expert_load(
    moe_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    """A preference method on a MoE: the policy's adapters sit on the expert tensors."""
    out = tmp_path / "out"
    doc = manifest(
        "dpo",
        moe_models["qwen3_moe"],
        data_dir / "pref.jsonl",
        "preference",
        out,
        eval_data=data_dir / "pref_eval.jsonl",
        hyper={"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 2e-2},
        rlhf={"dpo": {"beta": 0.5}},
        peft={"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["experts"]}},
        moe={"freezeRouter": True, "routerAuxLossCoef": 0.01},
    )
    result = _train(doc, tmp_path)
    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert tuned["loss"] < base["loss"] - 0.01, (base, tuned)
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "mlp.experts" in n for n in trainable), trainable
    for record in train_log(out):
        assert sum(record["moe/expertTokenShare"]) == pytest.approx(1.0, abs=1e-5)
    assert "kubetune_trainer_moe_expert_token_ratio{" in (out / "metrics.prom").read_text()


def test_validation_refuses_moe_settings_the_model_cannot_take(
    moe_models: dict[str, Path], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.config import load_job
    from kubetune_trainer.preflight import validate_job
    from tests.trainer.helpers import write_config

    def validate(model: Path, moe: dict[str, Any]) -> str:
        doc = manifest("full", model, data_dir / "chat.jsonl", "chat", tmp_path / "o", moe=moe)
        return validate_job(load_job(write_config(doc, tmp_path / "job.json")), tmp_path / "o")

    with pytest.raises(InvalidConfigError, match="not a mixture-of-experts model"):
        validate(tiny_model, {"freezeRouter": True})
    with pytest.raises(InvalidConfigError, match=r"trainExperts \[4, 7\] out of range.*4 experts"):
        validate(moe_models["mixtral"], {"trainExperts": [0, 4, 7]})
    assert "4 experts, 2 per token" in validate(moe_models["mixtral"], {"trainExperts": [3]})
