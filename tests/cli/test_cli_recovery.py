"""The command line's network-failure options reach the client's policy, and a generation that
fell back to edge-only says so."""

from __future__ import annotations

from edgespec.cli import build_parser
from edgespec.cli.options import recovery_policy
from edgespec.cli.printers import fallback_warning, format_stats
from edgespec.core.stats import GenerationStats


def parse(*extra: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["generate", "--server", "127.0.0.1:1", "hi", *extra])


def test_recovery_flags_become_the_clients_policy() -> None:
    policy = recovery_policy(
        parse("--retries", "3", "--outage-budget", "4.5", "--no-fallback", "--probe-interval", "0.5")
    )
    assert (policy.retries, policy.outage_budget_s, policy.fallback, policy.probe_interval_s) == (3, 4.5, False, 0.5)


def test_fallback_is_on_by_default() -> None:
    assert recovery_policy(parse()).fallback is True


def test_a_fallback_is_reported_with_the_positions_the_draft_decided() -> None:
    stats = GenerationStats(mode="sd", new_tokens=40, fallback_tokens=12, fallback_spans=[(10, 20), (30, 32)])
    stats.connection_losses, stats.fallbacks, stats.reconnects, stats.switchbacks = 1, 2, 1, 1
    warning = fallback_warning(stats)
    assert "12 of 40 tokens" in warning and "10..19, 30..31" in warning and "NOT the target's output" in warning
    assert "fallbacks=2 switchbacks=1" in format_stats(stats)
    assert stats.as_dict()["lossless"] is False
