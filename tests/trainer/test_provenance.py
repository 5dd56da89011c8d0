"""spec.dataset.provenance end to end in the trainer: validation refuses an input whose
digest is not on the allow-list (naming the file and its digest, never its contents) and
passes an approved one; lineage.json and the model card carry every input's digest, its
row counts and the filters applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode
from kubetune.contract.digest import sha256_path
from kubetune.contract.env import PROVENANCE_DIR_ENV
from tests.trainer.helpers import manifest, read_json, run_trainer, train_in_process, write_config

PROVENANCE = {"requireApproved": True, "allowListRef": {"name": "approved-data"}}


def _data(data_dir: Path, tmp_path: Path) -> Path:
    """The chat rows plus one broken row (skipped and counted with skipInvalidRows)."""
    path = tmp_path / "train.jsonl"
    path.write_text((data_dir / "chat.jsonl").read_text() + "{broken\n")
    return path


def _doc(tiny_model: Path, train: Path, out: Path, **dataset: Any) -> dict[str, Any]:
    return manifest(
        "lora",
        tiny_model,
        train,
        "chat",
        out,
        eval_split=0.1,
        peft={"lora": {"r": 2}},
        dataset={"skipInvalidRows": True, "provenance": PROVENANCE, **dataset},
    )


def _allow(tmp_path: Path, *digests: str) -> Path:
    folder = tmp_path / "allow-list"
    folder.mkdir(exist_ok=True)
    entries = "".join(f"  - sha256: {d}\n    name: approved {i}\n" for i, d in enumerate(digests))
    (folder / "approved.yaml").write_text("approved:\n" + (entries or "  []\n"))
    return folder


def _validate(doc: dict[str, Any], tmp_path: Path, allow_list: Path) -> tuple[int, str]:
    out = tmp_path / "out"
    config = write_config(doc, tmp_path / "job.json")
    assert PROVENANCE_DIR_ENV == "KUBETUNE_PROVENANCE_DIR"
    proc = run_trainer(config, out, "--validate-only", KUBETUNE_PROVENANCE_DIR=str(allow_list))
    log = tmp_path / "out.termination-log"
    return proc.returncode, (log.read_text() if log.exists() else proc.stderr[-3000:])


def test_unapproved_file_is_refused_naming_file_and_digest(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    train = _data(data_dir, tmp_path)
    other = "f" * 64
    code, message = _validate(
        _doc(tiny_model, train, tmp_path / "out"),
        tmp_path,
        _allow(tmp_path, other),
    )
    assert code == ExitCode.INVALID_DATA, message
    assert f"train {train}: file sha256 {sha256_path(train)}" in message
    assert "not on the approved allow-list (ConfigMap approved-data, key approved.yaml)" in message
    assert "hello" not in message and "messages" not in message  # never the data itself


def test_missing_allow_list_is_a_clear_config_error(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "mounted-but-absent"
    empty.mkdir()  # what an optional ConfigMap volume looks like when the map is missing
    code, message = _validate(
        _doc(tiny_model, _data(data_dir, tmp_path), tmp_path / "out"),
        tmp_path,
        empty,
    )
    assert code == ExitCode.INVALID_CONFIG, message
    assert "allow-list ConfigMap approved-data (key approved.yaml) was not found" in message


def test_a_directory_is_checked_by_its_directory_digest(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Both inputs are named; a separate eval set (a directory here) needs approval too."""
    train = _data(data_dir, tmp_path)
    eval_dir = tmp_path / "eval-set"
    eval_dir.mkdir()
    (eval_dir / "part-0.jsonl").write_text((data_dir / "chat_eval.jsonl").read_text())
    doc = _doc(tiny_model, train, tmp_path / "out")
    doc["spec"]["dataset"].pop("evalSplit")
    doc["spec"]["dataset"]["eval"] = str(eval_dir)
    allow = _allow(tmp_path, sha256_path(train))
    code, message = _validate(doc, tmp_path, allow)
    assert code == ExitCode.INVALID_DATA, message
    assert f"eval {eval_dir}: directory sha256 {sha256_path(eval_dir)}" in message
    assert "1 of 2 data inputs" in message and f"train {train}" not in message


def test_approved_data_passes_and_lineage_and_card_carry_provenance(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = _data(data_dir, tmp_path)
    digest = sha256_path(train)
    allow = _allow(tmp_path, digest)
    out = tmp_path / "out"
    doc = _doc(tiny_model, train, out)
    code, message = _validate(doc, tmp_path, allow)
    assert code == ExitCode.SUCCESS, message
    assert "provenance: 1 of 1 data inputs approved by ConfigMap approved-data" in message

    monkeypatch.setenv(PROVENANCE_DIR_ENV, str(allow))
    train_in_process(doc, tmp_path)
    lineage = read_json(out / "lineage.json")
    prov = lineage["provenance"]
    assert prov["requireApproved"] is True
    assert prov["allowList"] == {"configMap": "approved-data", "key": "approved.yaml"}
    assert prov["dataPolicy"] is None
    by_role = {r["role"]: r for r in prov["inputs"]}
    t = by_role["train"]
    assert t["uri"] == str(train) and t["sha256"] == digest and t["digestOf"] == "file"
    assert t["rows"]["total"] == 49 and t["rows"]["valid"] == 48
    assert t["rows"]["invalid"] == t["rows"]["skippedInvalid"] == 1
    assert t["rows"]["truncated"] >= 0 and t["redactions"] == {}
    assert any(f.startswith("evalSplit 0.1") for f in t["filters"])
    assert any("invalid rows skipped" in f for f in t["filters"])
    assert any("maxSeqLength 256" in f for f in t["filters"])
    assert t["approval"]["approved"] is True and t["approval"]["approvedAs"] == "approved 0"
    e = by_role["eval"]
    assert e["sha256"] == digest and "held out from the training data (evalSplit)" in e["filters"]

    card = (out / "README.md").read_text()
    section = card.split("## Data provenance", 1)[1].split("\n## ", 1)[0]
    assert digest in section and "ConfigMap `approved-data`" in section
    assert "| train |" in section and "49 (48 / 1 / 1 /" in section
    assert "yes (approved 0)" in section and "Filters applied:" in section
    assert json.dumps(prov)  # serialisable as written


def test_every_data_input_is_named_and_digested(tmp_path: Path) -> None:
    """Continual protected tasks and evaluation sets are data inputs too; the record builder
    takes redactions and the data policy (the personal-data hook)."""
    from kubetune.api import FineTuneJob
    from kubetune_trainer.data.provenance import data_inputs, digest_inputs, provenance_record

    files = {}
    for name in ("train", "a-train", "a-eval", "faq"):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(f'{{"text": "{name}"}}\n')
    doc = manifest("lora", tmp_path, files["train"], "text", tmp_path / "out")
    doc["spec"]["peft"] = {"lora": {"r": 2}}
    doc["spec"]["continual"] = {
        "protectedTasks": [
            {
                "name": "task-a",
                "train": str(files["a-train"]),
                "eval": str(files["a-eval"]),
                "format": "text",
            }
        ],
        "replay": {"ratio": 0.25},
    }
    doc["spec"]["evaluation"] = {
        "sets": [{"name": "faq", "uri": str(files["faq"]), "metrics": [{"type": "exactMatch"}]}]
    }
    spec = FineTuneJob.model_validate(doc).spec
    roles = [(i.role, i.uri) for i in data_inputs(spec)]
    assert roles == [
        ("train", str(files["train"])),
        ("continual/task-a/train", str(files["a-train"])),
        ("continual/task-a/eval", str(files["a-eval"])),
        ("evaluation/faq", str(files["faq"])),
    ]
    digests = {d.input.role: d.sha256 for d in digest_inputs(spec)}
    assert digests["evaluation/faq"] == sha256_path(files["faq"])
    record = provenance_record(
        role="train",
        uri=str(files["train"]),
        sha256=digests["train"],
        redactions={"email": 3, "phone": 1},
        policy={"personalData": "redact"},
    )
    assert record["redactions"] == {"email": 3, "phone": 1}
    assert record["dataPolicy"] == {"personalData": "redact"} and record["rows"] is None
