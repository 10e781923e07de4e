"""Request and response bodies of the OpenAI-compatible API (pydantic).

Requests forbid unknown fields, so a parameter this server does not implement is a 400, never a
silent ignore. Parameters OpenAI defines but edgespec cannot honour (penalties,
``logit_bias``, ...) are declared so that their neutral values (what many clients send by default)
pass, and anything else is refused with the parameter named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgespec.openai_api.chat_messages import ChatMessage
from edgespec.openai_api.errors import InvalidText, unsupported
from edgespec.openai_api.logprobs import ChatLogprobs, CompletionLogprobs
from edgespec.openai_api.response_format import ResponseFormat
from edgespec.openai_api.tool_schemas import NamedToolChoice, ToolCall, ToolCallDelta, ToolChoice, ToolDefinition

# The verifier accepts temperatures of 0 (greedy) or in [0.001, 100]; OpenAI's range is [0, 2].
MIN_SAMPLING_TEMPERATURE = 0.001
MAX_STOP_STRINGS = 16
# Text that could begin a stop is held back and rescanned as it grows: a long stop string would
# cost time quadratic in its length on every token.
MAX_STOP_CHARS = 1000
SEED_MODULUS = 2**64  # the wire's seed is uint64; OpenAI's may be any int64
MAX_TOP_LOGPROBS = 20  # OpenAI's limits: chat's top_logprobs, the legacy completions' logprobs
MAX_COMPLETION_LOGPROBS = 5
# Each choice is a generation of its own (a slot, a cloud session): a request may ask this many.
MAX_CHOICES = 16


def check_unicode(body: Any) -> None:
    """Raise InvalidText for the first string in ``body`` (a parsed JSON value) that is not valid
    Unicode: JSON's ``\\ud800`` escape decodes to a lone surrogate, which no tokenizer, template or
    UTF-8 encoder accepts. Iterative, so a deeply nested body cannot exhaust the stack."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                code_point = ord(value[error.start])
                message = f"contains a lone surrogate (U+{code_point:04X}) at index {error.start}, not valid Unicode"
                raise InvalidText(path or "body", message) from None
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                stack.append((path or "body", key))
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # echoed back; one target serves every request
    # No upper bound here: the handler refuses a value over the verifier's limit, naming it.
    max_tokens: int | None = Field(default=None, ge=1)
    # NaN and infinities are refused as what they are, not as out of range.
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's own records; nothing to honour
    presence_penalty: float | None = Field(default=None, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_unicode(data)
        return data

    @field_validator("temperature")
    @classmethod
    def _sampling_temperature(cls, value: float | None) -> float | None:
        if value is not None and 0.0 < value < MIN_SAMPLING_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_SAMPLING_TEMPERATURE}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(stop == "" for stop in stops):
            raise ValueError("a stop string must not be empty")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"a stop string may have at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("n")
    @classmethod
    def _choices_in_range(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        if value is not None and value > MAX_CHOICES:
            raise unsupported("n", f"= {value} (at most {MAX_CHOICES} choices per request)")
        return value

    @property
    def choices(self) -> int:
        return self.n or 1

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None, info: Any) -> float | None:
        if value not in (None, 0.0):
            raise unsupported(info.field_name, "other than 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise unsupported("logit_bias", "")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def wire_seed(self) -> int | None:
        return None if self.seed is None else self.seed % SEED_MODULUS

    @property
    def include_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tool_choice_among_tools(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            raise InvalidText("tools", "two functions have the same name")
        if self.tool_choice is not None and not self.tools:
            raise InvalidText("tool_choice", "is only allowed when tools are given")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            message = f"names {self.tool_choice.function.name!r}, and no tool has that name ({', '.join(names)})"
            raise InvalidText("tool_choice", message)
        if self.calls_tools and self.response_format is not None and self.response_format.type != "text":
            raise InvalidText("response_format", "cannot be combined with tools: a tool call has its own grammar")
        return self

    @property
    def tool_choice_name(self) -> str:
        """none, auto, required or the function's name; OpenAI's default is auto when tools are given."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice or ("auto" if self.tools else "none")

    @property
    def calls_tools(self) -> bool:
        """The answer may hold tool calls (so it is read back as content and calls)."""
        return bool(self.tools) and self.tool_choice_name != "none"

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidText("top_logprobs", "needs logprobs set to true")
        return self

    @property
    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens disagree; send one")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    # Text, or token ids; a list of several prompts would need n choices per call.
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    # The legacy API's spelling: how many alternatives per token (0: the chosen token's only).
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise unsupported("prompt", "with several prompts in one request")
            value = value[0]
        if len(value) == 0:
            raise ValueError("must not be empty")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise unsupported("echo", "")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise unsupported("suffix", "(insertion)")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise unsupported("best_of", f"= {value}")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


# ------------------------------------------------------------------ responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class EdgespecInfo(BaseModel):
    """How the text was made: the extension object on every final response and chunk."""

    mode: str
    rounds: int
    tokens_per_round: float
    hit_rate: float
    acceptance_rate: float
    # False when any token was decided by the draft alone (an outage's edge-only fallback).
    lossless: bool
    fallback_tokens: int
    # [start, end) indices into the completion's tokens that the draft alone decided.
    fallback_spans: list[tuple[int, int]]
    connection_losses: int
    reconnects: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the answer is tool calls only
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=lambda calls: calls is None)


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    edgespec: EdgespecInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    edgespec: EdgespecInfo | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    edgespec: EdgespecInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgespec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
