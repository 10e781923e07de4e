"""Chat messages as a request carries them: text (or text parts), the calls an assistant message
made, and a tool's result (``role: "tool"``, answering a call by its id), turned into the
dictionaries a chat template renders."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from edgespec.openai_api.errors import unsupported
from edgespec.openai_api.tool_schemas import ToolCallSent


class TextPart(BaseModel):
    # Other part types (images, audio) carry other fields: let them through to be refused by type.
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> TextPart:
        if self.type != "text" or self.text is None:
            raise unsupported("content part type", repr(self.type))
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallSent] | None = None  # an assistant's, sent back on the next turn
    tool_call_id: str | None = None  # a tool message's: the call it answers

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant message with tool_calls may omit it)")
        return self

    @field_validator("name")
    @classmethod
    def _no_name(cls, value: str | None) -> str | None:
        if value is not None:
            raise unsupported("name", "on a message")
        return value

    @property
    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content)

    def as_template_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.as_template_call() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message
