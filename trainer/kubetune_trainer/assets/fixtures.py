"""Stand-ins for the PVCs of the local examples (``kubetune run --local``).

A local run maps ``pvc://<claim>/<path>`` to ``<pvc root>/<claim>/<path>`` just as the
operator mounts claims in a pod. The example manifests under ``examples/local/`` name
a few well-known paths; when such a path is missing locally it is created here,
deterministically: a tiny chat model (tokenizer trained on the sample data, random
weights) and the sample datasets (the same rows as ``examples/data/``). Unknown
paths are never invented — the trainer then reports them as missing, as in a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubetune.contract.uris import Scheme, parse_uri
from kubetune_trainer.assets import sample_data as sd

TINY_CHAT_MODEL = "models/kubetune-tiny-chat"
TINY_VLM = "models/kubetune-tiny-vlm"
# PVC path -> (rows, seed) of the synthetic colour task (images written next to the file)
COLOUR_PATHS = {
    "datasets/sample-colours/train.jsonl": (192, 201),
    "datasets/sample-colours/eval.jsonl": (24, 202),
}
#: PVC path -> (rows, seed) of support chats with fake personal data (pii-redact.yaml)
PII_CHAT_PATHS = {
    "datasets/sample-pii-chat/train.jsonl": (240, 301),
    "datasets/sample-pii-chat/eval.jsonl": (24, 302),
}
#: a Qwen3-MoE-style tiny model (8 experts, top 2) for examples/local/moe-lora.yaml
TINY_MOE_MODEL = "models/kubetune-tiny-moe"
#: the demo's base: a tiny model pre-trained on English text (examples/local/demo.yaml)
SMALL_BASE_MODEL = "models/kubetune-small-base"
#: PVC path -> demo data (short-list tasks): (kind, rows, seed); "prompts" is the
#: evaluation set of held-out prompts (chat template rendered in) with references
DEMO_PATHS = {
    "datasets/demo-tasks/train.jsonl": ("chat", 4000, 601),
    "datasets/demo-tasks/eval.jsonl": ("chat", 64, 602),
    "datasets/demo-tasks/prompts.jsonl": ("prompts", 32, 603),
}
DEMO_MAX_ITEMS = 3
DEMO_TASKS = ("reverse", "count")

# file name in examples/data -> (generator, count, seed)
SAMPLE_FILES: dict[str, tuple[Callable[..., list[dict]], int, int]] = {
    "chat-train.jsonl": (sd.chat_rows, 400, 101),
    "chat-eval.jsonl": (sd.chat_rows, 40, 102),
    "prompt-completion.jsonl": (sd.prompt_completion_rows, 200, 103),
    "text.jsonl": (sd.text_rows, 200, 104),
    "preferences-train.jsonl": (sd.preference_rows, 200, 105),
    "preferences-eval.jsonl": (sd.preference_rows, 24, 106),
    "prompts-train.jsonl": (sd.count_prompt_rows, 200, 107),
    "prompts-eval.jsonl": (sd.count_prompt_rows, 24, 108),
}
SAMPLE_MAX_ITEMS = 16

# PVC path -> sample file it holds
DATASET_PATHS = {
    "datasets/sample-chat/train.jsonl": "chat-train.jsonl",
    "datasets/sample-chat/eval.jsonl": "chat-eval.jsonl",
    "datasets/sample-prompt-completion/train.jsonl": "prompt-completion.jsonl",
    "datasets/sample-text/train.jsonl": "text.jsonl",
    "datasets/sample-preferences/train.jsonl": "preferences-train.jsonl",
    "datasets/sample-preferences/eval.jsonl": "preferences-eval.jsonl",
    "datasets/sample-prompts/train.jsonl": "prompts-train.jsonl",
    "datasets/sample-prompts/eval.jsonl": "prompts-eval.jsonl",
}


def sample_rows(name: str) -> list[dict]:
    generator, count, seed = SAMPLE_FILES[name]
    return generator(count, seed=seed, max_items=SAMPLE_MAX_ITEMS if "pref" not in name else 10)


def write_sample_files(directory: Path) -> list[Path]:
    """(Re)generate ``examples/data``; a test checks the shipped files match."""
    return [sd.write_jsonl(sample_rows(name), directory / name) for name in SAMPLE_FILES]


def build_tiny_chat_model(target: Path) -> Path:
    from kubetune_trainer.models.tiny import TinyModelSpec, default_corpus, ensure_tiny_model

    corpus = default_corpus() + sd.corpus_from_rows(
        sd.chat_rows(600, seed=7, max_items=SAMPLE_MAX_ITEMS)
        + sd.prompt_completion_rows(200, seed=8, max_items=SAMPLE_MAX_ITEMS)
        + sd.preference_rows(200, seed=9, max_items=10)
        + sd.text_rows(200, seed=10, max_items=SAMPLE_MAX_ITEMS)
    )
    spec = TinyModelSpec(
        family="llama",
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        seed=1234,
    )
    return ensure_tiny_model(target, spec, corpus)


def build_tiny_moe_model(target: Path) -> Path:
    from kubetune_trainer.models.tiny import default_corpus
    from kubetune_trainer.models.tiny_moe import TinyMoeSpec, ensure_tiny_moe_model

    corpus = default_corpus() + sd.corpus_from_rows(
        sd.chat_rows(600, seed=7, max_items=SAMPLE_MAX_ITEMS)
        + sd.preference_rows(200, seed=9, max_items=10)
    )
    spec = TinyMoeSpec(
        family="qwen3_moe",
        vocab_size=1024,
        hidden_size=128,
        expert_intermediate_size=128,
        num_experts=8,
        num_experts_per_tok=2,
        num_hidden_layers=4,
        seed=1234,
    )
    return ensure_tiny_moe_model(target, spec, corpus)


def demo_rows(rel: str) -> list[dict]:
    """The demo's rows; held-out rows never repeat a training prompt."""
    kind, count, seed = DEMO_PATHS[rel]
    if kind == "chat":
        rows = sd.chat_rows(
            count, seed=seed, max_items=DEMO_MAX_ITEMS, multi_turn=0.0, kinds=DEMO_TASKS
        )
    else:
        rows = sd.prompt_reference_rows(
            count, seed=seed, max_items=DEMO_MAX_ITEMS, kinds=DEMO_TASKS
        )
    if rel.endswith("train.jsonl"):
        return rows
    _, train_count, train_seed = DEMO_PATHS["datasets/demo-tasks/train.jsonl"]
    train = sd.chat_rows(
        train_count, seed=train_seed, max_items=DEMO_MAX_ITEMS, multi_turn=0.0, kinds=DEMO_TASKS
    )
    seen = {m["content"] for row in train for m in row["messages"] if m["role"] == "user"}
    return [row for row in rows if sd.user_prompt(row) not in seen]


def seed_location(uri: str, pvc_root: Path) -> str | None:
    """Create the content of a well-known example location if missing; says what it did."""
    location = parse_uri(uri)
    local = location.local_path(pvc_root) if location.scheme is Scheme.PVC else None
    if local is None:
        return None
    target = Path(local)
    rel = target.relative_to(pvc_root).as_posix()
    if rel == TINY_CHAT_MODEL:
        if (target / "kubetune_tiny.json").exists():
            return None
        build_tiny_chat_model(target)
        return f"built the tiny example model at {target}"
    if rel == TINY_VLM:
        if (target / "kubetune_tiny.json").exists():
            return None
        from kubetune_trainer.assets.vision_data import corpus
        from kubetune_trainer.models.tiny_vlm import ensure_tiny_vlm

        ensure_tiny_vlm(target, corpus())
        return f"built the tiny example vision-language model at {target}"
    if rel in COLOUR_PATHS and not target.exists():
        from kubetune_trainer.assets.vision_data import write_colour_jsonl

        write_colour_jsonl(target, *COLOUR_PATHS[rel])
        return f"wrote sample image dataset {target}"
    if rel == TINY_MOE_MODEL:
        if (target / "kubetune_tiny.json").exists():
            return None
        build_tiny_moe_model(target)
        return f"built the tiny mixture-of-experts example model at {target}"
    if rel == SMALL_BASE_MODEL:
        if (target / "kubetune_tiny.json").exists():
            return None
        from kubetune_trainer.models.small_base import build_small_base

        build_small_base(target)
        return f"built the small base model (pre-trained on English docstrings) at {target}"
    if rel in DEMO_PATHS and not target.exists():
        sd.write_jsonl(demo_rows(rel), target)
        return f"wrote demo dataset {target}"
    if rel in PII_CHAT_PATHS and not target.exists():
        from kubetune_trainer.privacy.fake import pii_chat_rows

        sd.write_jsonl(pii_chat_rows(*PII_CHAT_PATHS[rel]), target)
        return f"wrote sample dataset with fake personal data {target}"
    if rel in DATASET_PATHS and not target.exists():
        sd.write_jsonl(sample_rows(DATASET_PATHS[rel]), target)
        return f"wrote sample dataset {target}"
    return None
