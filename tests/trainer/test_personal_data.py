"""spec.dataPolicy.personalData in the trainer: refuse fails validation with file, line
and kind (never the value); redact replaces every finding before tokenization, so what
the model trains on holds no original value; allow trains as is; each records counts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJob
from kubetune.api.resolve import resolve
from kubetune.contract import ExitCode
from tests.trainer.helpers import manifest, read_json, run_trainer, train_in_process, write_config

# fake values (reserved domains and ranges, card and IBAN test numbers) of every kind
VALUES = {
    "email": "ana.lima@example.com",
    "phone": "+44 20 7946 0958",
    "creditCard": "4111 1111 1111 1111",
    "bankAccount": "DE89 3704 0044 0532 0130 00",
    "nationalId": "123-45-6789",
    "ipAddress": "203.0.113.42",
    "streetAddress": "221 Baker Street",
    "personName": "Ana Lima",
}
# what must not survive redaction: the values and their distinctive parts
SECRETS = [*VALUES.values(), "ana.lima", "7946 0958", "4111", "3704 0044", "6789", "113.42"]


def leaked(text: str) -> list[str]:
    """The secrets (or their fragments) in ``text``, as values: a fragment of digits inside a
    longer number (a loss of 0.94111…, a digest) is a coincidence, not a leak."""
    return [s for s in SECRETS if re.search(rf"(?<!\d){re.escape(s)}(?!\d)", text)]


def _chat_rows(clean: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The clean sample rows with personal data in rows 2 (line 2), 5 and 9."""
    rows = copy.deepcopy(clean)
    v = VALUES
    rows[1]["messages"][-2]["content"] = f"Hi, my name is {v['personName']}, mail {v['email']}"
    rows[4]["messages"][-1]["content"] = (
        f"Call {v['phone']}; card {v['creditCard']}; IBAN {v['bankAccount']}"
    )
    rows[8]["messages"][-2]["content"] = (
        f"SSN {v['nationalId']}, from {v['ipAddress']}, at {v['streetAddress']}"
    )
    return rows


def _preference_rows(clean: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = copy.deepcopy(clean)
    v = VALUES
    rows[0]["prompt"] = f"My name is {v['personName']} ({v['email']}). " + str(rows[0]["prompt"])
    rows[2]["chosen"] = f"Call {v['phone']} or pay {v['bankAccount']}"
    rows[3]["rejected"] = (
        f"{v['creditCard']} {v['nationalId']} {v['ipAddress']} {v['streetAddress']}"
    )
    return rows


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pii_chat(data_dir: Path, tmp_path: Path) -> Path:
    return _write(_chat_rows(_read(data_dir / "chat.jsonl")), tmp_path / "pii.jsonl")


def _doc(model: Path, train: Path, out: Path, action: str | None, **kw: Any) -> dict[str, Any]:
    fmt = kw.pop("fmt", "chat")
    method = kw.pop("method", "lora")
    extra: dict[str, Any] = {"peft": {"lora": {"r": 2}}} if method == "lora" else {}
    if action is not None or kw:  # kw: the policy's other fields (kinds)
        extra["dataPolicy"] = {"personalData": ({"action": action} if action else {}) | kw}
    return manifest(method, model, train, fmt, out, **extra)


def _seen_text(doc: dict[str, Any], model: Path) -> tuple[str, Any]:
    """Decoded token ids of every training sequence: exactly what the model trains on."""
    from kubetune_trainer.data.validate import _samples, prepare_data
    from kubetune_trainer.models.load import load_tokenizer

    tokenizer = load_tokenizer(model)
    job = resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)
    data = prepare_data(job, tokenizer)
    texts = [
        tokenizer.decode(s.input_ids)
        for e in data.train.examples
        for s in _samples(e)
        if hasattr(s, "input_ids")
    ]
    return "\n".join(texts), data


@pytest.mark.parametrize("fmt", ["chat", "preference"])
def test_redact_leaves_no_value_in_what_the_model_sees(
    tiny_model: Path, data_dir: Path, tmp_path: Path, fmt: str
) -> None:
    if fmt == "chat":
        train, method = (
            _write(_chat_rows(_read(data_dir / "chat.jsonl")), tmp_path / "d.jsonl"),
            "lora",
        )
    else:
        train = _write(_preference_rows(_read(data_dir / "pref.jsonl")), tmp_path / "d.jsonl")
        method = "dpo"
    # control: without redaction the values do reach the tokens (the check can fail)
    seen, _ = _seen_text(
        _doc(tiny_model, train, tmp_path / "o", "allow", fmt=fmt, method=method), tiny_model
    )
    assert all(value in seen for value in VALUES.values())
    seen, data = _seen_text(
        _doc(tiny_model, train, tmp_path / "o", "redact", fmt=fmt, method=method), tiny_model
    )
    assert not leaked(seen)
    for placeholder in ("<EMAIL>", "<PHONE>", "<CREDIT_CARD>", "<BANK_ACCOUNT>", "<NATIONAL_ID>",
                        "<IP_ADDRESS>", "<ADDRESS>", "<PERSON>"):  # fmt: skip
        assert placeholder in seen
    scan = data.train.report.personal_data
    assert scan is not None and dict(scan.counts) == dict.fromkeys(VALUES, 1)
    assert scan.rows_with_findings == 3


def test_redact_trains_and_records_counts_only(
    tiny_model: Path, pii_chat: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    doc = _doc(tiny_model, pii_chat, out, "redact")
    caplog.set_level("INFO")
    train_in_process(doc, tmp_path)
    lineage = read_json(out / "lineage.json")
    personal = lineage["dataPolicy"]["personalData"]
    assert personal["action"] == "redact"
    assert personal["total"] == dict(sorted(dict.fromkeys(VALUES, 1).items()))
    assert personal["splits"]["train"]["rowsWithFindings"] == 3
    card = (out / "README.md").read_text()
    assert "## Personal data" in card and "action **redact**" in card
    assert "email 1" in card
    assert "personal data (redact)" in caplog.text
    written = "\n".join(
        p.read_text(errors="replace")
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".txt")
    )
    assert not leaked(written + caplog.text)


def test_refuse_fails_with_file_line_and_kind_never_the_value(
    tiny_model: Path, pii_chat: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = write_config(_doc(tiny_model, pii_chat, out, "refuse"), tmp_path / "j.json")
    proc = run_trainer(config, out, "--validate-only")
    assert proc.returncode == ExitCode.INVALID_DATA, proc.stderr[-2000:]
    message = (tmp_path / "out.termination-log").read_text()
    for expected in (
        f"{pii_chat}:2: email",
        f"{pii_chat}:2: personName",
        f"{pii_chat}:5: bankAccount",
        f"{pii_chat}:5: creditCard",
        f"{pii_chat}:5: phone",
        f"{pii_chat}:9: ipAddress",
        f"{pii_chat}:9: nationalId",
        f"{pii_chat}:9: streetAddress",
    ):
        assert expected in message
    assert "personal data in 3 of 48 train rows" in message
    everything = message + proc.stdout + proc.stderr
    assert not leaked(everything)


def test_refuse_default_action_and_a_subset_of_kinds(
    tiny_model: Path, pii_chat: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.errors import InvalidDataError

    with pytest.raises(InvalidDataError) as failure:  # action defaults to refuse
        _seen_text(
            _doc(tiny_model, pii_chat, tmp_path / "o", None, kinds=["nationalId"]), tiny_model
        )
    assert str(failure.value).count(":9: nationalId") == 1
    assert "email" not in str(failure.value)
    # clean data passes a refusing policy
    clean = _write(_read(pii_chat)[9:], tmp_path / "clean.jsonl")
    _, data = _seen_text(_doc(tiny_model, clean, tmp_path / "o", "refuse"), tiny_model)
    assert data.train.report.personal_data.counts == {}


def test_allow_records_counts_and_trains_on_the_data_as_is(
    tiny_model: Path, pii_chat: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = write_config(_doc(tiny_model, pii_chat, out, "allow"), tmp_path / "j.json")
    proc = run_trainer(config, out, "--validate-only")
    assert proc.returncode == ExitCode.SUCCESS, proc.stderr[-2000:]
    assert "personal data in train (allow):" in proc.stdout
    assert "creditCard 1" in proc.stdout and "in 3 rows" in proc.stdout
    assert not leaked(proc.stdout + proc.stderr)


def test_without_a_policy_nothing_is_scanned(
    tiny_model: Path, pii_chat: Path, tmp_path: Path
) -> None:
    seen, data = _seen_text(_doc(tiny_model, pii_chat, tmp_path / "o", None), tiny_model)
    assert data.train.report.personal_data is None and VALUES["email"] in seen


def test_the_example_seeds_fake_data_of_every_kind(tmp_path: Path) -> None:
    """examples/local/pii-redact.yaml: its local PVC data is generated and every kind in
    it is found, and redacted completely."""
    import yaml

    from kubetune_trainer.assets.fixtures import seed_location
    from kubetune_trainer.data.readers import iter_rows
    from kubetune_trainer.privacy import KINDS, redact_value, scan_dataset, scan_value

    example = yaml.safe_load(
        (Path(__file__).parents[2] / "examples/local/pii-redact.yaml").read_text()
    )
    assert example["spec"]["dataPolicy"]["personalData"]["action"] == "redact"
    dataset = example["spec"]["dataset"]
    for uri in (dataset["train"], dataset["eval"]):
        assert seed_location(uri, tmp_path) is not None
    train = tmp_path / "datasets/sample-pii-chat/train.jsonl"
    scan = scan_dataset(train)
    assert set(scan.counts) == set(KINDS) and 0 < scan.rows_with_findings < scan.rows
    assert all(not scan_value(redact_value(row.value)[0]) for row in iter_rows(train))


def test_protected_task_rows_are_checked_too(
    tiny_model: Path, data_dir: Path, pii_chat: Path, tmp_path: Path
) -> None:
    """spec.continual replays protected rows into training: the same policy applies."""
    from kubetune_trainer.continual.data import load_protected
    from kubetune_trainer.errors import InvalidDataError
    from kubetune_trainer.models.load import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    task = {"name": "old-task", "train": str(pii_chat), "format": "chat", "evalSplit": 0.2}

    def job(action: str) -> Any:
        doc = _doc(tiny_model, data_dir / "chat.jsonl", tmp_path / "o", action)
        doc["spec"]["continual"] = {"protectedTasks": [task]}
        return resolve(FineTuneJob.model_validate(doc), nodes=1, nproc_per_node=1)

    with pytest.raises(InvalidDataError) as failure:
        load_protected(job("refuse"), tokenizer)
    assert f"{pii_chat}:2: email" in str(failure.value)
    assert not leaked(str(failure.value))
    (protected,) = load_protected(job("redact"), tokenizer)
    seen = "\n".join(tokenizer.decode(e.input_ids) for e in [*protected.train, *protected.eval])
    assert "<EMAIL>" in seen and not leaked(seen)
