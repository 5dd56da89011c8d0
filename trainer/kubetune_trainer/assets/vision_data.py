"""The synthetic colour task of the vision examples, tests and benchmark.

Each row shows one solid-colour image (a random shade around one of a few named colours,
so no two images are identical) and asks for its colour; the answer is the colour name.
A text-only model cannot do better than guessing, so accuracy on held-out images shows
that the image reached the language model. Images are written as PNG files next to the
JSONL (relative paths, as a user's dataset would be) or kept as bytes for Parquet.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "black": (15, 15, 15),
    "white": (240, 240, 240),
}
QUESTION = "What colour is the image?"
IMAGE_SIZE = 32


def colour_png(colour: str, rng: random.Random, size: int = IMAGE_SIZE) -> bytes:
    """PNG bytes of a solid image of a random shade of ``colour``."""
    from PIL import Image

    rgb = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def messages(image: Any, answer: str | None = None) -> list[dict[str, Any]]:
    """One turn of the task in the transformers content-part convention."""
    turns: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}],
        }
    ]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def colour_samples(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(colour, png bytes) pairs, colours cycling so every colour is represented."""
    rng = random.Random(seed)
    names = list(COLOURS)
    return [(names[i % len(names)], colour_png(names[i % len(names)], rng)) for i in range(count)]


def write_colour_jsonl(path: Path, count: int, seed: int) -> Path:
    """A JSONL file plus ``images/`` next to it; image paths are relative to the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = path.parent / f"{path.stem}-images"
    image_dir.mkdir(exist_ok=True)
    lines = []
    for index, (colour, png) in enumerate(colour_samples(count, seed)):
        name = f"{index:04d}.png"
        (image_dir / name).write_bytes(png)
        rel = f"{image_dir.name}/{name}"
        lines.append(json.dumps({"messages": messages(rel, colour)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_colour_parquet(path: Path, count: int, seed: int) -> Path:
    """The same rows as Parquet: image parts carry no path, their PNG bytes are the
    row's ``images`` column, in order (the convention of Hugging Face VLM datasets)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def part_list(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"type": p["type"], "text": p.get("text")} for p in parts]

    rows = [
        {
            "messages": [
                {"role": m["role"], "content": part_list(m["content"])}
                for m in messages(None, colour)
            ],
            "images": [png],
        }
        for colour, png in colour_samples(count, seed)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def corpus() -> list[str]:
    """Text for the tiny VLM's tokenizer: the question and the colour names."""
    return [QUESTION] * 20 + [" ".join(COLOURS)] * 20
