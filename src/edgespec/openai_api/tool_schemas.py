"""The tool parts of OpenAI's chat API (pydantic): function definitions and ``tool_choice`` in a
request, the calls an assistant message carries back on the next turn, and the ``tool_calls`` of a
response and of a stream's deltas."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from edgespec.decoding.tool_calls import ToolFunction

# OpenAI's rule for a function's name.
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # the grammar always holds the arguments to the schema


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition
    _sent: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_as_sent(cls, data: Any, handler: Any) -> ToolDefinition:
        tool = handler(data)
        if isinstance(data, dict):
            tool._sent = data
        return tool

    def as_function(self) -> ToolFunction:
        return ToolFunction(self.function.name, self.function.parameters)

    def as_template_tool(self) -> dict[str, Any]:
        """The tool as chat templates read it: as the client sent it, keys in its order (a template
        shows it to the model as JSON text, so the order is part of the prompt)."""
        return self._sent if self._sent is not None else self.model_dump(exclude_none=True)


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI spells it


class ToolCall(BaseModel):
    """A call in a response (its arguments as generated: cut short at ``max_tokens``, not JSON)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallSent(ToolCall):
    """A call an assistant message carries back on the next turn: its arguments must be JSON."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("function")
    @classmethod
    def _arguments_are_json(cls, value: FunctionCall) -> FunctionCall:
        try:
            json.loads(value.arguments or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"function.arguments is not JSON: {error}") from None
        return value

    def as_template_call(self) -> dict[str, Any]:
        """The call as chat templates read it: arguments as an object (Qwen's template writes them
        with ``tojson``; a JSON string there would be quoted twice)."""
        arguments = json.loads(self.function.arguments or "{}")
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": arguments}}


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A call in a stream: its first delta names it (id, type, name), later ones carry more of its
    arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta
