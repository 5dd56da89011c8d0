"""``kubetune serve`` with a real tiny model, a LoRA adapter and a reward model on the CPU:
generation, chat templates, measured time to first token, reward scores, and the CLI
as a subprocess (default served name, metrics labelled with it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from kubetune_trainer.models.load import load_tokenizer
from kubetune_trainer.serving.app import ModelServer, ServeSettings
from kubetune_trainer.serving.engine import HFEngine
from kubetune_trainer.serving.protocol import GenerationRequest
from kubetune_trainer.serving.reward import RewardScorer


@pytest.fixture(scope="module")
def lora_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA output as the trainer writes it (PEFT adapter + tokenizer), with non-zero B
    so the adapted model really differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    out = tmp_path_factory.mktemp("adapters") / "support-lora"
    get_peft_model(base, config).save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reward_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequence-classification model directory, as a `reward` job saves one."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("reward") / "rm"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _serve(server: ModelServer, test: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> Samples:
    """Run ``test`` against the server in-process; the metrics it exposes afterwards."""

    async def main() -> Samples:
        client: TestClient[Any, Any] = TestClient(TestServer(server.app()))
        await client.start_server()
        try:
            await test(client)
            await server.drain()
            text = await (await client.get("/metrics")).text()
        finally:
            await client.close()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    return asyncio.run(main())


def test_adapter_is_applied(tiny_model: Path, lora_adapter: Path) -> None:
    base = HFEngine(tiny_model)
    adapted = HFEngine(tiny_model, lora_adapter)
    ids = base.tokenizer("the model train", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert not torch.allclose(base.model(ids).logits, adapted.model(ids).logits)


def test_generation_is_greedy_or_seeded(tiny_model: Path, lora_adapter: Path) -> None:
    engine = HFEngine(tiny_model, lora_adapter)
    greedy = GenerationRequest("the model train", max_tokens=6)
    first, again = engine.generate(greedy), engine.generate(greedy)
    assert first == dataclasses.replace(again, first_token_at=first.first_token_at)
    assert first.first_token_at is not None
    assert first.prompt_tokens == len(engine.tokenizer("the model train")["input_ids"])
    assert first.completion_tokens <= 6
    assert first.finish_reason == ("length" if first.completion_tokens == 6 else "stop")
    sampled = GenerationRequest("the model train", max_tokens=6, temperature=1.0, seed=5)
    assert engine.generate(sampled).text == engine.generate(sampled).text


def test_completions_chat_and_reward_through_the_server(
    tiny_model: Path, lora_adapter: Path, reward_model: Path
) -> None:
    engine = HFEngine(tiny_model, lora_adapter)
    settings = ServeSettings(model_name="support-lora", reward_sample_rate=1.0)
    server = ModelServer(engine, settings, RewardScorer(reward_model))
    messages = [{"role": "user", "content": "where is my order"}]
    template = engine.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    chat_tokens = len(engine.tokenizer(template, add_special_tokens=False)["input_ids"])

    async def test(client: TestClient[Any, Any]) -> None:
        resp = await client.post(
            "/v1/completions", json={"prompt": "the model", "max_tokens": 5, "temperature": 0}
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["model"] == "support-lora"
        assert body["usage"]["completion_tokens"] <= 5
        chat = await client.post(
            "/v1/chat/completions", json={"messages": messages, "max_tokens": 5}
        )
        chat_body = await chat.json()
        assert chat.status == 200, chat_body
        assert chat_body["usage"]["prompt_tokens"] == chat_tokens
        assert isinstance(chat_body["choices"][0]["message"]["content"], str)
        too_long = await client.post(
            "/v1/completions", json={"prompt": "the " * 3000, "max_tokens": 5}
        )
        assert too_long.status == 400
        assert "context" in (await too_long.json())["error"]["message"]

    samples = _serve(server, test)
    labels = (("engine", "0"), ("model_name", "support-lora"))
    ttft = samples[("vllm:time_to_first_token_seconds_sum", labels)]
    e2e = samples[("vllm:e2e_request_latency_seconds_sum", labels)]
    assert samples[("vllm:time_to_first_token_seconds_count", labels)] == 2
    assert 0 < ttft < e2e
    rm = (("model_name", "support-lora"),)
    assert samples[("kubetune_serve_reward_score_count", rm)] == 2
    assert samples[("kubetune_serve_reward_score_squared_total", rm)] > 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_cli_serves_with_the_adapter_name(tiny_model: Path, lora_adapter: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "kubetune.cli.main", "serve", str(tiny_model)]
    cmd += ["--adapter", str(lora_adapter), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0].decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        models = json.loads(_get(f"{base}/v1/models"))
        assert [m["id"] for m in models["data"]] == ["support-lora"]
        request = urllib.request.Request(
            f"{base}/v1/completions",
            data=json.dumps({"prompt": "hello", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert json.loads(resp.read())["model"] == "support-lora"
        metrics = _get(f"{base}/metrics")
        assert (
            'vllm:request_success_total{engine="0",finished_reason="length",'
            'model_name="support-lora"} 1.0'
            in metrics
            or 'vllm:request_success_total{engine="0",finished_reason="stop",'
            'model_name="support-lora"} 1.0'
            in metrics
        )
    finally:
        proc.terminate()
        proc.wait(20)
