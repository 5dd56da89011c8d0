"""The feedback loop on the CPU (docs/feedback-loop.md): `kubetune serve` with a feedback
log answers chat requests from a tiny model; users send thumbs, 1-5 ratings and a
correction (one prompt holds an email address); a reviewer adds a review file;
`kubetune feedback build` turns both into preference pairs and KTO examples (pairs,
labels, duplicates, a conflict, redaction counts, no email left); a DPO job from the
current model trains on them with an evaluation gate built from the corrections.

The rollout of the result is ModelRollout's job, covered by the rollout tests
(tests/unit/operator, tests/e2e) and docs/rollouts.md."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from kubetune_trainer.feedback.builder import BuildOptions, build
from kubetune_trainer.serving.app import ModelServer, ServeSettings
from kubetune_trainer.serving.engine import HFEngine
from tests.trainer.helpers import manifest, read_json, train_in_process, train_log

EMAIL = "jane.doe@example.com"
#: (question, the answer a user types as a correction)
QUESTIONS = [
    ("what is the capital of france", "paris"),
    (f"reset the password of {EMAIL}", "open the account page"),
    ("how do I train a model", "run the trainer"),
    ("which port does the server use", "eight thousand"),
    ("name a colour", "blue"),
    ("count to three", "one two three"),
]


def _chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


async def _traffic(client: TestClient[Any, Any]) -> None:
    async def ask(question: str, **sampling: Any) -> str:
        resp = await client.post(
            "/v1/chat/completions", json={"messages": _chat(question), "max_tokens": 8, **sampling}
        )
        assert resp.status == 200
        return str((await resp.json())["id"])

    async def rate(ident: str, **body: Any) -> None:
        resp = await client.post("/v1/feedback", json={"id": ident, **body})
        assert resp.status == 200 and (await resp.json())["logged"] is True

    for question, answer in QUESTIONS:  # greedy answers, each corrected
        await rate(await ask(question), correction=answer)
    # the same greedy answer again, thumbed down: a duplicate of the corrected one
    await rate(await ask(QUESTIONS[0][0]), rating="negative")
    # two sampled answers to one question, rated 5 and 1: a pair by score
    await rate(await ask(QUESTIONS[2][0], temperature=1.0, seed=1), rating=5)
    await rate(await ask(QUESTIONS[2][0], temperature=1.0, seed=2), rating=1)
    # one answer judged both ways: a conflict, dropped
    conflicting = await ask("tell me a joke")
    await rate(conflicting, rating="positive")
    await rate(conflicting, rating="negative")
    # a neutral score: logged, kept out of both outputs
    await rate(await ask("say nothing"), rating=3)


def test_feedback_to_dpo_with_an_evaluation_gate(tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve" / "feedback.jsonl"
    engine = HFEngine(tiny_model)
    server = ModelServer(engine, ServeSettings(model_name="support-v1", feedback_log=log))

    async def main() -> None:
        client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
        await client.start_server()
        try:
            await _traffic(client)
        finally:
            await client.close()

    asyncio.run(main())
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == len(QUESTIONS) + 6
    assert logged[1]["prompt"] == _chat(QUESTIONS[1][0])  # the log holds what users sent

    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(
        json.dumps(
            {
                "prompt": _chat("which port does the server use"),
                "response": "port 22",
                "rating": 1,
                "correction": "eight thousand",
                "reviewer": "ops-oncall",
            }
        )
        + "\n"
    )

    data = tmp_path / "data"
    report = build(data, [log], [reviews], BuildOptions(personal_data="redact"))
    preference = [json.loads(x) for x in (data / "preference.jsonl").read_text().splitlines()]
    unpaired = [json.loads(x) for x in (data / "unpaired.jsonl").read_text().splitlines()]

    assert report.rows_read == {"feedback": len(QUESTIONS) + 6, "reviews": 1}
    assert report.dropped["duplicate"] == 1  # the repeated greedy answer
    assert report.dropped["superseded"] == 1  # the user's correction the reviewer repeated
    assert report.dropped["conflicting"] == 2 and report.dropped["neutral"] == 1
    assert report.dropped["empty"] == 0 and report.dropped["invalid"] == 0
    # one pair per correction, the review's port-22 answer, and the 5-over-1 pair plus
    # each sampled answer against the greedy / corrected one where the rule says so
    chosen = {(r["prompt"][-1]["content"], r["chosen"][0]["content"]) for r in preference}
    for question, answer in QUESTIONS:
        if EMAIL in question:
            continue
        assert (question, answer) in chosen
    rejected_port = {
        r["rejected"][0]["content"] for r in preference if "port" in r["prompt"][0]["content"]
    }
    assert "port 22" in rejected_port
    assert report.kept["preference"] == len(preference) >= len(QUESTIONS) + 2
    labels = [r["label"] for r in unpaired]
    assert labels.count(True) == report.unpaired_labels["true"] >= len(QUESTIONS) + 1
    assert labels.count(False) == report.unpaired_labels["false"] >= len(QUESTIONS) + 1

    # personal data: counted, and gone from every file the build wrote
    assert sum(report.personal_data.values()) >= 1
    assert report.personal_data == {"email": 1}
    for path in data.iterdir():
        assert EMAIL not in path.read_text()
    assert EMAIL not in json.dumps(report.to_json())

    # evaluation set: the corrected questions, rendered with the chat template
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"prompt": engine.render_chat(_chat(q)), "reference": a}) + "\n"
            for q, a in QUESTIONS
            if EMAIL not in q
        )
    )
    out = tmp_path / "dpo"
    doc = manifest(
        "dpo",
        tiny_model,  # the model currently served: the previous run's output
        data / "preference.jsonl",
        "preference",
        out,
        hyper={"maxSteps": 3, "globalBatchSize": 4, "microBatchSize": 2, "learningRate": 1e-3},
        rlhf={"dpo": {"beta": 0.1}},
        evaluation={
            "sets": [
                {
                    "name": "corrections",
                    "uri": str(qa),
                    "maxNewTokens": 4,
                    "metrics": [
                        {"type": "contains"},
                        {"type": "regex", "name": "any", "pattern": "."},
                    ],
                }
            ],
            "gates": [
                {"metric": "corrections/contains", "noWorseThanBaseline": {"tolerance": 1.0}},
                {"metric": "corrections/any", "atLeast": 0.0},
            ],
            "bootstrapSamples": 100,
            "seed": 3,
        },
    )
    train_in_process(doc, tmp_path)
    losses = [row["loss"] for row in train_log(out)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    evaluation = read_json(out / "evaluation.json")
    assert evaluation["verdict"] == "Passed", evaluation["gates"]
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
