"""The runtime exit heads live with the target runtime (``edgespec.models.exit_heads``), so the
models package does not depend on exit training; this name stays for existing callers."""

from edgespec.models.exit_heads import ExitAdapter, ExitHeads, ExitReading, ExitSpec

__all__ = ["ExitAdapter", "ExitHeads", "ExitReading", "ExitSpec"]
