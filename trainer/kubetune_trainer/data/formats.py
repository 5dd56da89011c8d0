"""The row formats and their checks: chat, promptCompletion, text, preference, unpaired,
promptOnly, visionChat.

Each raw row (a dict) is turned into a typed example or rejected with a reason a human
can act on ("messages[2].role 'bot' is not one of ..."). Column names come from the
format's defaults, overridden by ``dataset.fieldMapping``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Message = dict[str, str]
Conversation = list[Message]
Turn = str | Conversation

ROLES = frozenset({"system", "user", "assistant", "tool"})

DEFAULT_COLUMNS = {
    "messages": "messages",
    "prompt": "prompt",
    "completion": "completion",
    "text": "text",
    "chosen": "chosen",
    "rejected": "rejected",
    "answer": "answer",
    "label": "label",
    "images": "images",
}


class RowError(ValueError):
    """A row that cannot be used, with the reason."""


@dataclass(frozen=True)
class ChatExample:
    messages: Conversation


@dataclass(frozen=True)
class PromptCompletionExample:
    prompt: Turn
    completion: Turn


@dataclass(frozen=True)
class TextExample:
    text: str


@dataclass(frozen=True)
class PreferenceExample:
    """A preference pair. ``prompt`` is None when chosen/rejected are whole conversations
    that share their opening turns (the "implicit prompt" form); it is derived then."""

    prompt: Turn | None
    chosen: Turn
    rejected: Turn


@dataclass(frozen=True)
class PromptOnlyExample:
    """A prompt for online RL; ``answer`` is what a verifiable reward checks against."""

    prompt: Turn
    answer: str | None


@dataclass(frozen=True)
class UnpairedExample:
    """One completion judged on its own (TRL's unpaired preference type, for KTO):
    ``desirable`` is the row's boolean label."""

    prompt: Turn
    completion: Turn
    desirable: bool


#: where an image comes from: a path relative to the row's file, or the image's bytes
ImageRef = str | bytes


@dataclass(frozen=True)
class VisionChatExample:
    """Chat whose contents are part lists; every image part is ``{"type": "image"}`` and
    ``images`` holds the parts' images in order (read and checked by the vision encoder,
    relative to ``base_dir``, the directory of the row's file)."""

    messages: list[dict[str, Any]]
    images: tuple[ImageRef, ...]
    base_dir: Path | None = None


Example = (
    VisionChatExample
    | ChatExample
    | PromptCompletionExample
    | TextExample
    | PreferenceExample
    | UnpairedExample
    | PromptOnlyExample
)


def columns(mapping: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(DEFAULT_COLUMNS)
    merged.update({k: v for k, v in (mapping or {}).items() if v})
    return merged


def _get(row: Mapping[str, Any], column: str, *, required: bool = True) -> Any:
    if column not in row or row[column] is None:
        if required:
            present = ", ".join(sorted(row)) or "none"
            raise RowError(f"missing column {column!r} (columns present: {present})")
        return None
    return row[column]


def _conversation(value: Any, name: str) -> Conversation:
    if not isinstance(value, list) or not value:
        raise RowError(f"{name} must be a non-empty list of messages")
    messages: Conversation = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            raise RowError(f"{where} must be an object with role and content")
        role = item.get("role")
        content = item.get("content")
        if role not in ROLES:
            raise RowError(f"{where}.role {role!r} is not one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"{where}.content must be a string")
        messages.append({"role": str(role), "content": content})
    return messages


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{name} is empty")
    return value


def _turn(value: Any, name: str) -> Turn:
    return _conversation(value, name) if isinstance(value, list) else _text(value, name)


def parse_chat(row: Mapping[str, Any], cols: Mapping[str, str]) -> ChatExample:
    messages = _conversation(_get(row, cols["messages"]), cols["messages"])
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise RowError(f"{cols['messages']} has no assistant message to learn from")
    if not any(m["content"].strip() for m in answers):
        raise RowError(f"every assistant message in {cols['messages']} is empty")
    return ChatExample(messages)


def parse_prompt_completion(
    row: Mapping[str, Any], cols: Mapping[str, str]
) -> PromptCompletionExample:
    prompt = _turn(_get(row, cols["prompt"]), cols["prompt"])
    completion = _turn(_get(row, cols["completion"]), cols["completion"])
    if isinstance(prompt, list) != isinstance(completion, list):
        raise RowError("prompt and completion must both be strings or both message lists")
    return PromptCompletionExample(prompt, completion)


def parse_text(row: Mapping[str, Any], cols: Mapping[str, str]) -> TextExample:
    return TextExample(_text(_get(row, cols["text"]), cols["text"]))


def parse_preference(row: Mapping[str, Any], cols: Mapping[str, str]) -> PreferenceExample:
    raw_prompt = _get(row, cols["prompt"], required=False)
    chosen = _turn(_get(row, cols["chosen"]), cols["chosen"])
    rejected = _turn(_get(row, cols["rejected"]), cols["rejected"])
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise RowError("chosen and rejected must both be strings or both message lists")
    prompt: Turn | None = None
    if raw_prompt is not None:
        prompt = _turn(raw_prompt, cols["prompt"])
        if isinstance(prompt, list) != isinstance(chosen, list):
            raise RowError("prompt, chosen and rejected must all be strings or all message lists")
    elif isinstance(chosen, list) and isinstance(rejected, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise RowError("no prompt column and chosen/rejected share no opening messages")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not chosen or not rejected:
            raise RowError("chosen or rejected has no turns after the shared prompt")
    else:
        raise RowError(f"missing column {cols['prompt']!r} (needed with string chosen/rejected)")
    if chosen == rejected:
        raise RowError("chosen and rejected are identical: the pair carries no preference")
    if isinstance(chosen, list) and chosen[-1]["role"] != "assistant":
        raise RowError("the chosen conversation must end with an assistant message")
    if isinstance(rejected, list) and rejected[-1]["role"] != "assistant":
        raise RowError("the rejected conversation must end with an assistant message")
    return PreferenceExample(prompt, chosen, rejected)


def parse_prompt_only(row: Mapping[str, Any], cols: Mapping[str, str]) -> PromptOnlyExample:
    prompt = _turn(_get(row, cols["prompt"]), cols["prompt"])
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise RowError("the prompt conversation must not end with an assistant message")
    raw = _get(row, cols["answer"], required=False)
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, str | int | float)):
        raise RowError(f"{cols['answer']} must be a string or a number")
    return PromptOnlyExample(prompt, None if raw is None else str(raw))


def parse_unpaired(row: Mapping[str, Any], cols: Mapping[str, str]) -> UnpairedExample:
    """Prompt and completion as in promptCompletion, plus a JSON boolean label.

    Strict on the label: "yes", 1 or "true" are refused rather than guessed, because a
    flipped label trains the model towards the completion it should avoid."""
    pair = parse_prompt_completion(row, cols)
    label = _get(row, cols["label"])
    if not isinstance(label, bool):
        raise RowError(
            f"{cols['label']} must be true (desirable) or false (undesirable), "
            f"not {type(label).__name__} {label!r}"
        )
    if isinstance(pair.completion, list) and pair.completion[-1]["role"] != "assistant":
        raise RowError("the completion must end with an assistant message")
    return UnpairedExample(pair.prompt, pair.completion, label)


def _vision_content(value: Any, where: str, column: list[Any], images: list[ImageRef]) -> Any:
    """A message content: a string, or parts whose images are moved to ``images``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}.content must be a string or a non-empty list of parts")
    parts: list[dict[str, str]] = []
    for index, part in enumerate(value):
        here = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RowError(f"{here}.text must be a string")
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image":
            ref = part.get("image") or part.get("path")
            if ref is None:  # the next image of the row's image column
                if not column:
                    raise RowError(f"{here} names no image and the image column has none left")
                ref = column.pop(0)
            if isinstance(ref, Mapping):  # Hugging Face Image feature: {bytes, path}
                ref = ref.get("bytes") or ref.get("path")
            if not isinstance(ref, str | bytes) or not ref:
                raise RowError(f"{here}.image must be a relative path or image bytes")
            images.append(ref)
            parts.append({"type": "image"})
        else:
            raise RowError(f"{here}.type must be 'text' or 'image', not {kind!r}")
    return parts


def parse_vision_chat(row: Mapping[str, Any], cols: Mapping[str, str]) -> VisionChatExample:
    """Chat in the transformers content-part convention; images by path or bytes."""
    name = cols["messages"]
    value = _get(row, name)
    if not isinstance(value, list) or not value:
        raise RowError(f"{name} must be a non-empty list of messages")
    column = list(_get(row, cols["images"], required=False) or [])
    images: list[ImageRef] = []
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, Mapping):
            raise RowError(f"{where} must be an object with role and content")
        if item.get("role") not in ROLES:
            raise RowError(f"{where}.role {item.get('role')!r} is not one of {sorted(ROLES)}")
        content = _vision_content(item.get("content"), where, column, images)
        messages.append({"role": str(item["role"]), "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"{name} has no assistant message to learn from")
    if column:
        raise RowError(f"{len(column)} image(s) in {cols['images']} have no image part")
    return VisionChatExample(messages, tuple(images))


Parser = Callable[[Mapping[str, Any], Mapping[str, str]], Example]

PARSERS: dict[str, Parser] = {
    "chat": parse_chat,
    "promptCompletion": parse_prompt_completion,
    "text": parse_text,
    "preference": parse_preference,
    "promptOnly": parse_prompt_only,
    "unpaired": parse_unpaired,
    "visionChat": parse_vision_chat,
}


def parse_row(fmt: str, row: Mapping[str, Any], mapping: Mapping[str, str] | None) -> Example:
    """Check one row against ``fmt``; raises RowError with the reason."""
    parser = PARSERS.get(fmt)
    if parser is None:
        raise RowError(f"unknown dataset format {fmt!r}")
    return parser(row, columns(mapping))
