"""JSON extraction prompts and their schemas, written for the structured-output checks (not taken
from any benchmark, so nothing is tuned on one): a sentence in, a record out. The real-pair test
(tests/e2e/test_real_pair_structured.py) and the speed check (scripts/structured_output_check.py)
share them."""

from __future__ import annotations

from typing import Any

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"type": "string", "maxLength": 40},
        "occupation": {"type": "string", "maxLength": 40},
    },
    "required": ["name", "age", "city", "occupation"],
    "additionalProperties": False,
}
INVOICE_LINE = {
    "type": "object",
    "properties": {
        "item": {"type": "string", "maxLength": 60},
        "quantity": {"type": "integer", "minimum": 1},
        "unit_price": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD", "GBP", "CHF"]},
    },
    "required": ["item", "quantity", "unit_price", "currency"],
    "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "start_time": {"type": "string", "pattern": r"^\d{2}:\d{2}$"},
        "location": {"type": "string", "maxLength": 60},
        "attendees": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 6},
    },
    "required": ["title", "date", "start_time", "location", "attendees"],
    "additionalProperties": False,
}
BUG_REPORT = {
    "type": "object",
    "properties": {
        "component": {"type": "string", "maxLength": 40},
        "severity": {"enum": ["low", "medium", "high", "critical"]},
        "summary": {"type": "string", "maxLength": 80},
        "reproducible": {"type": "boolean"},
    },
    "required": ["component", "severity", "summary", "reproducible"],
    "additionalProperties": False,
}

CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "person",
        PERSON,
        "Extract the person from this sentence as JSON with name, age, city and occupation: "
        "Maria Lindqvist, a 34-year-old marine biologist, moved to Gothenburg last spring.",
    ),
    (
        "invoice_line",
        INVOICE_LINE,
        "Extract the invoice line as JSON with item, quantity, unit_price and currency: "
        "12 boxes of M6 stainless steel hex bolts at 4.75 euros per box.",
    ),
    (
        "event",
        EVENT,
        "Extract the event as JSON with title, date (YYYY-MM-DD), start_time (HH:MM), location and attendees: "
        "The quarterly planning review is on 14 March 2027 at 09:30 in room B2, with Priya, Tom and Aiko.",
    ),
    (
        "bug_report",
        BUG_REPORT,
        "Extract the bug report as JSON with component, severity, summary and reproducible: "
        "Every time I upload a PNG larger than 20 MB the image service crashes and the whole upload page goes "
        "blank; this blocks all our customers, and I can make it happen on demand.",
    ),
]


def messages(instruction: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You extract structured data. Answer with one JSON object only."},
        {"role": "user", "content": instruction},
    ]
