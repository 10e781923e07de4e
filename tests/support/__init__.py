"""Helpers the tests share: tiny models, wire-level sessions, servers to watch, certificates."""
