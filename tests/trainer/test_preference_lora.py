"""DPO, KTO and ORPO with a LoRA policy (``peft.lora``): an adapter on a frozen base whose
reference is the base itself (adapter disabled), saved and merged like LoRA's."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kubetune_trainer.config import load_job
from kubetune_trainer.data.batching import collate
from kubetune_trainer.data.encode import Encoder
from kubetune_trainer.data.formats import parse_row
from kubetune_trainer.data.validate import DataReport, PreparedData, SplitData
from kubetune_trainer.distributed.env import DistEnv
from kubetune_trainer.methods.reference import precompute_reference
from kubetune_trainer.methods.registry import get_method
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log, write_config

LORA = {"lora": {"r": 8, "alpha": 16, "targetModules": ["all-linear"]}}
HYPER = {"maxSteps": 8, "globalBatchSize": 8, "microBatchSize": 4, "learningRate": 2e-2}


def _inputs(tokenizer) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    enc = tokenizer(["Sort these numbers: 5 3 9\nAnswer:"], return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_dpo_lora_policy_trains_an_adapter(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_weights = load_file(str(tiny_model / "model.safetensors"))
    out = tmp_path / "out"
    doc = manifest(
        "dpo",
        tiny_model,
        data_dir / "pref.jsonl",
        "preference",
        out,
        eval_data=data_dir / "pref_eval.jsonl",
        hyper=HYPER,
        rlhf={"dpo": {"beta": 0.5}},
        peft=LORA,
    )
    doc["spec"]["output"]["mergeAdapter"] = True
    result = train_in_process(doc, tmp_path)
    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert base["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the base
    assert tuned["loss"] < base["loss"] - 0.02 and tuned["reward_accuracy"] > 0.5
    losses = [row["loss"] for row in train_log(out)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    # the output is a PEFT adapter; the card and the lineage say so
    config = read_json(out / "adapter_config.json")
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert not (out / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card
    assert "policy: a LoRA adapter on the frozen base" in card

    # only the adapter trained: the base weights under it are the originals
    trained = result.model
    trainable = [name for name, p in trained.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    under = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in trained.state_dict().items()
        if "lora_" not in k
    }
    for name, weight in base_weights.items():
        torch.testing.assert_close(under[name], weight, rtol=0, atol=0)

    # reload (adapter on a fresh base) and merge agree with the model in memory
    tokenizer = AutoTokenizer.from_pretrained(out)
    impl = get_method(load_job(tmp_path / "job.json"))
    reloaded = impl.load_trained(tiny_model, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        expected = trained.eval()(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain(**inputs).logits, expected, atol=1e-4)


def test_reference_of_a_lora_policy_is_the_base(tiny_model: Path, tmp_path: Path) -> None:
    """Even with a non-zero adapter, the precomputed reference is the base's log-probs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.assets.sample_data import preference_rows

    doc = manifest(
        "dpo", tiny_model, tmp_path / "x.jsonl", "preference", tmp_path, peft=LORA, rlhf={"dpo": {}}
    )
    method = get_method(load_job(write_config(doc, tmp_path / "job.json")))
    assert type(method).__name__ == "LoraDpoMethod" and method.name == "dpo"
    model = method.build(tiny_model, None, torch.float32)
    with torch.no_grad():  # a trained-looking adapter: the policy now differs from the base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    encoder = Encoder(tokenizer, max_seq_length=128)
    pairs = [
        encoder.encode(parse_row("preference", row, None)) for row in preference_rows(6, seed=3)
    ]
    data = PreparedData(SplitData(pairs, DataReport("train", "x")), None)
    engine = SimpleNamespace(
        forward=model, model=model, unwrapped=model, eval=model.eval, train=model.train
    )
    env = DistEnv(0, 1, 0, torch.device("cpu"), None)

    def make_batch(examples, ids, split):  # type: ignore[no-untyped-def]
        units = [examples[i] for i in ids]
        return collate(units, padding_free=False, pad_token_id=0, dummy=examples[0])

    def columns(forward, module, batch):  # type: ignore[no-untyped-def]
        logps = method.logprobs(forward, module, batch).per_sequence()
        return torch.stack([logps[: len(logps) // 2], logps[len(logps) // 2 :]], dim=1)

    table = precompute_reference(method, engine, data, env, make_batch, columns, 2)["train"]
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base = torch.cat([columns(plain, plain, make_batch(pairs, [i], "")) for i in range(6)])
        policy = torch.cat([columns(model, model, make_batch(pairs, [i], "")) for i in range(6)])
    torch.testing.assert_close(table, base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, base, atol=1e-2)  # the adapter was really on
    assert model.training  # handed back in training mode


@pytest.mark.parametrize(
    ("method", "fmt", "rlhf"),
    [("kto", "preference", {"kto": {"beta": 0.5}}), ("orpo", "preference", {"orpo": {}})],
)
def test_kto_and_orpo_train_a_lora_policy(
    method: str, fmt: str, rlhf: dict, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    doc = manifest(
        method,
        tiny_model,
        data_dir / "pref.jsonl",
        fmt,
        out,
        eval_data=data_dir / "pref_eval.jsonl",
        hyper=HYPER,
        rlhf=rlhf,
        peft=LORA,
    )
    result = train_in_process(doc, tmp_path)
    base, tuned = result.eval_results["base"], result.eval_results["tuned"]
    assert tuned["loss"] < base["loss"]
    if method == "kto":
        assert base["loss"] == pytest.approx(0.5, abs=1e-5)  # reference = base: r = z0 = 0
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
