"""``response_format``: free text, or the grammar the target's output must follow (a JSON object,
a JSON schema, or edgespec's extensions: a regex or a Lark grammar)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgespec.openai_api.errors import InvalidText


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute: keep the JSON name, store it under another.
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # the grammar always holds the output to the schema


class ResponseFormat(BaseModel):
    """text; json_object (any JSON object); json_schema; and edgespec's extensions: regex
    (``pattern``) and lark (``grammar``, an EBNF in Lark's syntax)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema", "regex", "lark"]
    json_schema: JsonSchemaFormat | None = None
    pattern: str | None = None
    grammar: str | None = None

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ResponseFormat:
        needed = {"json_schema": self.json_schema, "regex": self.pattern, "lark": self.grammar}
        if self.type in needed and needed[self.type] is None:
            field = {"json_schema": "json_schema", "regex": "pattern", "lark": "grammar"}[self.type]
            raise InvalidText(f"response_format.{field}", f"is required with type {self.type!r}")
        return self

    def grammar_spec(self) -> tuple[str, str] | None:
        """(kind, source) of the grammar the output must follow; None for free text."""
        if self.type == "json_object":
            return "json_schema", json.dumps({"type": "object"})
        if self.type == "json_schema":
            assert self.json_schema is not None
            return "json_schema", json.dumps(self.json_schema.json_schema)
        if self.type == "regex":
            return "regex", self.pattern or ""
        if self.type == "lark":
            return "lark", self.grammar or ""
        return None
