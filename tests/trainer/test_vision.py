"""Vision-language fine-tuning (dataset format visionChat, spec.vision) on a tiny VLM.

The task: name the colour of a solid-colour image. The random base cannot; after a few
dozen LoRA or full steps the tuned model names it for held-out images, which proves
the images reach the language model through the processor, batches and loss mask.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kubetune_trainer.assets import vision_data as vd
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log

LORA = {"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}}
HYPER = {"globalBatchSize": 8, "microBatchSize": 8, "warmupRatio": 0.0}


@pytest.fixture(autouse=True)
def _no_observability(monkeypatch: pytest.MonkeyPatch) -> None:
    """No metrics server, progress document or curve plots: this file tests the learning."""
    monkeypatch.setenv("KUBETUNE_METRICS", "off")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubetune_trainer.models.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm", vd.corpus())


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    vd.write_colour_jsonl(root / "train.jsonl", 96, seed=1)
    vd.write_colour_jsonl(root / "eval.jsonl", 24, seed=2)
    return root


def _job(
    method: str, vlm: Path, train: Path, out: Path, steps: int, lr: float, **extra: Any
) -> dict[str, Any]:
    eval_data = extra.pop("eval_data", None)
    dataset = extra.pop("dataset", None)
    return manifest(
        method,
        vlm,
        train,
        "visionChat",
        out,
        eval_data=eval_data,
        hyper={**HYPER, "maxSteps": steps, "learningRate": lr},
        dataset=dataset,
        **extra,
    )


def _resolved(doc: dict[str, Any]) -> Any:
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve

    return resolve(FineTuneJob.model_validate(copy.deepcopy(doc)), nodes=1, nproc_per_node=1)


def _vision_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if "vision_tower" in k}


def test_lora_learns_the_colours_and_reloads_from_disk(
    vlm: Path, colours: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from kubetune_trainer.models.load import load_causal_lm
    from kubetune_trainer.vision.encode import load_processor
    from kubetune_trainer.vision.probe import accuracy

    out = tmp_path / "lora"
    doc = _job(
        "lora", vlm, colours / "train.jsonl", out, 30, 1e-2, eval_data=colours / "eval.jsonl"
    )
    doc["spec"]["peft"] = LORA
    result = train_in_process(doc, tmp_path)
    losses = [r["loss"] for r in train_log(out)]
    assert losses[-1] < 0.3 * losses[0], losses
    evals = read_json(out / "eval_results.json")
    assert evals["tuned"]["loss"] < 0.3 * evals["base"]["loss"]

    # the adapter targets the language model only; the projector trains fully and is saved
    config = read_json(out / "adapter_config.json")
    assert config["target_modules"] and not any(
        "vision_tower" in t for t in config["target_modules"]
    )
    assert any("language_model" in t for t in config["target_modules"])
    assert config["modules_to_save"] == ["multi_modal_projector"]
    assert (out / "processor_config.json").exists() and (out / "chat_template.jinja").exists()
    held_out = vd.colour_samples(18, seed=99)
    processor = load_processor(out)
    base = load_causal_lm(vlm, dtype=torch.float32)
    # the frozen tower was never touched
    base_state = base.state_dict()
    trained = result.model.state_dict()
    tower = [k for k in trained if "vision_tower" in k]
    assert tower
    for key in tower:
        assert torch.equal(trained[key], base_state[key.removeprefix("base_model.model.")]), key
    assert accuracy(base, processor, held_out) <= 0.2
    tuned = PeftModel.from_pretrained(load_causal_lm(vlm, dtype=torch.float32), out)
    assert accuracy(tuned, processor, held_out) >= 0.8


def test_full_keeps_a_frozen_tower_and_trains_it_on_request(
    vlm: Path, colours: Path, tmp_path: Path
) -> None:
    base = load_file(str(vlm / "model.safetensors"))
    frozen_out = tmp_path / "frozen"
    doc = _job("full", vlm, colours / "train.jsonl", frozen_out, 4, 1e-3)
    train_in_process(doc, tmp_path)
    frozen = load_file(str(frozen_out / "model.safetensors"))
    tower = _vision_tower(base)
    assert tower and all(torch.equal(frozen[k], v) for k, v in tower.items())
    projector = [k for k in base if "multi_modal_projector" in k]
    assert any(not torch.equal(frozen[k], base[k]) for k in projector)
    assert any(not torch.equal(frozen[k], base[k]) for k in base if "language_model" in k)
    assert (frozen_out / "processor_config.json").exists()

    trained_out = tmp_path / "tower"
    doc = _job(
        "full",
        vlm,
        colours / "train.jsonl",
        trained_out,
        2,
        1e-3,
        vision={"trainVisionTower": True, "trainProjector": False},
    )
    train_in_process(doc, tmp_path)
    trained = load_file(str(trained_out / "model.safetensors"))
    assert any(not torch.equal(trained[k], v) for k, v in tower.items())
    assert all(torch.equal(trained[k], base[k]) for k in projector)  # trainProjector: false


def _bad_rows(root: Path) -> Path:
    """Two good rows, then one row per problem (lines 3-7)."""
    import random

    images = root / "imgs"
    images.mkdir(parents=True)
    (images / "ok.png").write_bytes(vd.colour_png("red", random.Random(0)))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root.parent / "outside.png").write_bytes(vd.colour_png("red", random.Random(1)))
    two = {
        "role": "user",
        "content": [
            {"type": "image", "image": "imgs/ok.png"},
            {"type": "image", "image": "imgs/ok.png"},
        ],
    }
    rows = [
        vd.messages("imgs/ok.png", "red"),
        vd.messages("imgs/ok.png", "red"),
        vd.messages("imgs/missing.png", "red"),
        vd.messages("imgs/broken.png", "red"),
        vd.messages("../outside.png", "red"),
        vd.messages("/etc/hostname", "red"),
        [two, {"role": "assistant", "content": "red"}],
    ]
    path = root / "train.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in rows) + "\n")
    return path


def test_bad_images_are_reported_with_file_and_line(vlm: Path, tmp_path: Path) -> None:
    from kubetune_trainer.data.validate import prepare_data
    from kubetune_trainer.errors import InvalidDataError

    train = _bad_rows(tmp_path / "data")
    doc = _job("lora", vlm, train, tmp_path / "out", 1, 1e-3, vision={"maxImagesPerSample": 1})
    doc["spec"]["peft"] = LORA
    with pytest.raises(InvalidDataError) as caught:
        prepare_data(_resolved(doc), None)
    message = str(caught.value)
    assert "5 of 7 train rows are invalid" in message
    for line, fragment in [
        (3, "'imgs/missing.png' not found"),
        (4, "not a readable image"),
        (5, "escapes the dataset directory"),
        (6, "is absolute"),
        (7, "more than vision.maxImagesPerSample (1)"),
    ]:
        assert f"{train}:{line}: " in message and fragment in message, (line, message)

    # skipInvalidRows: the job trains on the good rows and lists the bad ones
    doc["spec"]["dataset"]["skipInvalidRows"] = True
    train_in_process(doc, tmp_path)
    issues = [
        json.loads(x) for x in (tmp_path / "out" / "data_issues.jsonl").read_text().split("\n") if x
    ]
    assert [i["line"] for i in issues] == [3, 4, 5, 6, 7]
    report = read_json(tmp_path / "out" / "data_report.json")[0]
    assert (report["validRows"], report["skippedRows"]) == (2, 5)


def test_parquet_image_column(vlm: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from kubetune_trainer.data.validate import prepare_data
    from kubetune_trainer.errors import InvalidDataError
    from kubetune_trainer.vision.encode import EncodedVisionSample

    path = vd.write_colour_parquet(tmp_path / "colours.parquet", 8, seed=3)
    doc = _job("lora", vlm, path, tmp_path / "out", 2, 1e-2)
    doc["spec"]["peft"] = LORA
    data = prepare_data(_resolved(doc), None)
    examples = data.train.examples
    assert len(examples) == 8 and all(isinstance(e, EncodedVisionSample) for e in examples)
    assert all(
        e.pixel_values is not None and e.pixel_values.shape == (1, 3, 32, 32) for e in examples
    )  # type: ignore[union-attr]
    result = train_in_process(doc, tmp_path)
    assert result.steps == 2 and result.final_loss is not None

    # a corrupt image in row 3 is reported by row number
    rows = pq.read_table(path).to_pylist()
    rows[2]["images"] = [b"garbage"]
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    doc["spec"]["dataset"]["train"] = str(bad)
    with pytest.raises(InvalidDataError, match=rf"{bad}:3: image bytes \(7 B\) is not a readable"):
        prepare_data(_resolved(doc), None)


def test_modality_mismatch_is_refused_at_validation(
    vlm: Path, colours: Path, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.data.validate import prepare_data
    from kubetune_trainer.errors import InvalidConfigError
    from kubetune_trainer.models.load import load_tokenizer

    images_on_text = _job("full", tiny_model, colours / "train.jsonl", tmp_path / "a", 1, 1e-3)
    with pytest.raises(InvalidConfigError, match=r"needs a vision-language model.*text-only"):
        prepare_data(_resolved(images_on_text), load_tokenizer(tiny_model))
    text_on_vlm = manifest("full", vlm, data_dir / "chat.jsonl", "chat", tmp_path / "b")
    with pytest.raises(InvalidConfigError, match=r"is a vision-language model.*visionChat"):
        prepare_data(_resolved(text_on_vlm), load_tokenizer(vlm))
