"""Prompt text to token ids: chat-templated for instruct models unless the caller asks for raw."""

from __future__ import annotations

from typing import Any, Sequence


def render_prompt(
    tokenizer: Any,
    prompt: str | Sequence[dict[str, Any]],
    raw: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids for ``prompt``: a user message (or a list of chat messages) rendered with the
    model's chat template and the assistant turn opened; ``raw`` text is encoded as is. ``tools``
    (OpenAI's function definitions) go to the template, which shows them to the model its way."""
    if raw:
        if not isinstance(prompt, str):
            raise ValueError("a raw prompt must be plain text, not chat messages")
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; pass --raw to send the prompt as plain text")
        options = {"tools": list(tools)} if tools else {}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    return [int(t) for t in ids]


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end generation: the model's generation config (what `generate` stops on),
    else the tokenizer's EOS."""
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        return frozenset()
    return frozenset([int(value)] if isinstance(value, int) else [int(v) for v in value])
