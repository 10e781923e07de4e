"""What `generate` shows a person: committed text as it streams, provisional text during an
outage, the target's log-probabilities when asked, and the statistics line at the end."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from edgespec.core.logprobs import TokenLogprob
    from edgespec.core.stats import GenerationStats


class StreamPrinter:
    """Prints committed tokens as text as they arrive. Decodes the whole text so far and prints
    the new suffix, since one token can end in the middle of a character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""

    def __call__(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.startswith(self.printed):
            sys.stdout.write(text[len(self.printed) :])
            sys.stdout.flush()
            self.printed = text


class ProvisionalPrinter:
    """Shows provisional tokens (decided by the draft alone during an outage) on ``out``, dim on
    a terminal, and says when the target retracted some; final text goes to stdout only."""

    DIM, RESET = "\x1b[2m", "\x1b[0m"

    def __init__(self, tokenizer: Any, out: Any) -> None:
        self.tokenizer = tokenizer
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.showing = False  # a provisional line is open

    def __call__(self, event: Any) -> None:
        if event.kind == "provisional":
            if not self.showing:
                self.out.write("\nedgespec: provisional (the draft alone, to be re-verified): ")
                self.showing = True
            text = self.tokenizer.decode(list(event.tokens), skip_special_tokens=True)
            self.out.write(f"{self.DIM}{text}{self.RESET}" if self.tty else text)
        elif event.kind == "retract":
            replaced = ""
            if event.replaced_by is not None:
                replaced = f" (the target says {self.tokenizer.decode([event.replaced_by])!r})"
            self.out.write(f"\nedgespec: retracted the provisional tokens from position {event.position}{replaced}\n")
            self.showing = False
        elif self.showing:
            self.out.write("\n")
            self.showing = False
        self.out.flush()


def format_stats(stats: GenerationStats) -> str:
    parts = [
        f"mode={stats.mode}",
        f"tokens={stats.new_tokens}",
        f"rounds={stats.rounds}",
        f"tokens/round={stats.tokens_per_round:.2f}",
        f"accept={stats.acceptance_rate:.2f}",
        f"{stats.tokens_per_s:.2f} tok/s",
        f"ttft={stats.ttft_s * 1000:.0f} ms",
    ]
    if stats.per_exit:
        parts.append(f"hits={stats.hits} misses={stats.misses} no-hint={stats.no_hint}")
    if stats.connection_losses:
        parts.append(
            f"outages={stats.connection_losses} reconnects={stats.reconnects} fallbacks={stats.fallbacks} "
            f"switchbacks={stats.switchbacks}",
        )
    if stats.provisional_tokens:
        parts.append(
            f"provisional={stats.provisional_tokens} reverified={stats.reverified} retracted={stats.retracted_tokens} "
            f"in {stats.retractions}",
        )
    return " ".join(parts)


def fallback_warning(stats: GenerationStats) -> str:
    spans = ", ".join(f"{start}..{end - 1}" for start, end in stats.fallback_spans if end > start)
    return (
        f"edgespec: warning: the server did not come back within the outage budget; {stats.fallback_tokens} of "
        f"{stats.new_tokens} tokens (positions {spans}) were decided by the draft alone, never re-verified, and are "
        "NOT the target's output"
    )


def logprobs_as_json(entries: Sequence[TokenLogprob], tokenizer: Any) -> list[dict[str, Any]]:
    """Each token's entry for ``--json``: its id and text, the target's log-probability, and the
    alternatives as [id, text, logprob]."""
    return [
        {
            "token": entry.token,
            "text": tokenizer.decode([entry.token]),
            "logprob": entry.logprob,
            "top": [[token, tokenizer.decode([token]), logprob] for token, logprob in entry.top],
        }
        for entry in entries
    ]


def format_logprobs(entries: Sequence[TokenLogprob], tokenizer: Any) -> str:
    """One line per token: its text, the target's log-probability, the likeliest alternatives."""
    lines = []
    for entry in entries:
        top = "  ".join(f"{tokenizer.decode([token])!r} {logprob:.4f}" for token, logprob in entry.top)
        lines.append(f"{tokenizer.decode([entry.token])!r:>16} {entry.logprob:9.4f}" + (f"   | {top}" if top else ""))
    return "\n".join(lines)
