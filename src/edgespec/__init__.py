"""edgespec: speculative edge-cloud decoding with early exits.

A small draft model on the edge proposes tokens; a large target model in the cloud verifies
them in one forward pass; early-exit heads inside the target let the server announce a verdict
before its forward pass ends so the edge can pre-draft. Output equals the target's own decoding.

The public API is what this module exports (``__all__``): the edge client and its options, the
generation config, modes and sampling parameters, the in-process engine, the verifier server,
the link emulator, the simulator's entry point and the model loaders. Everything else is internal
and may move. Names load on first use, so ``import edgespec`` (and the standard-library round
core, ``edgespec.core``) costs no torch or gRPC import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Generating: configuration, modes, sampling, results.
    "GenerationConfig": "edgespec.core.config",
    "GenerationResult": "edgespec.core.config",
    "SamplingParams": "edgespec.core.config",
    "GREEDY": "edgespec.core.config",
    "Mode": "edgespec.core.modes",
    "GenerationStats": "edgespec.core.stats",
    "TextEvent": "edgespec.core.generation",
    "apply_events": "edgespec.core.generation",
    # The edge: a client of a remote verifier, and the whole pair in one process.
    "EdgeClient": "edgespec.client.edge_client",
    "ClientOptions": "edgespec.client.edge_client",
    "ConnectionLost": "edgespec.client.edge_client",
    "ServerError": "edgespec.client.edge_client",
    "RecoveryPolicy": "edgespec.client.recovery",
    "ClientSecurity": "edgespec.transport.security",
    "Grammar": "edgespec.core.grammar",
    "tokenizer_fingerprint": "edgespec.decoding.grammar",
    "LocalEngine": "edgespec.drivers.local_engine",
    # Models: presets, local directories and GGUF files; the runtimes the drivers use.
    "load_model": "edgespec.models.loading",
    "load_draft": "edgespec.models.loading",
    "load_tokenizer": "edgespec.models.loading",
    "DraftRuntime": "edgespec.models.draft",
    "TargetRuntime": "edgespec.models.target",
    "render_prompt": "edgespec.prompting",
    "eos_token_ids": "edgespec.prompting",
    # Tool calls: the grammar a tool choice generates under, and the reader of the answer.
    "ToolFunction": "edgespec.decoding.tool_calls",
    "tool_grammar": "edgespec.decoding.tool_calls",
    "parse_tool_calls": "edgespec.decoding.tool_call_parser",
    # The cloud: the gRPC verifier.
    "ServerConfig": "edgespec.server.app",
    "serve": "edgespec.server.app",
    "RunningServer": "edgespec.server.app",
    # The network between them: a user-space link emulator and its profiles.
    "LinkEmulator": "edgespec.link",
    "LinkProfile": "edgespec.link",
    "PROFILES": "edgespec.link",
    # What-if on other hardware: replay recorded traces on a simulated clock.
    "SimConfig": "edgespec.sim.simulate",
    "simulate": "edgespec.sim.simulate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgespec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # type checkers and IDEs see the names without the lazy loading
    from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError
    from edgespec.client.recovery import RecoveryPolicy
    from edgespec.core.config import GREEDY, GenerationConfig, GenerationResult, SamplingParams
    from edgespec.core.generation import TextEvent, apply_events
    from edgespec.core.grammar import Grammar
    from edgespec.core.modes import Mode
    from edgespec.core.stats import GenerationStats
    from edgespec.decoding.grammar import tokenizer_fingerprint
    from edgespec.decoding.tool_call_parser import parse_tool_calls
    from edgespec.decoding.tool_calls import ToolFunction, tool_grammar
    from edgespec.drivers.local_engine import LocalEngine
    from edgespec.link import PROFILES, LinkEmulator, LinkProfile
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.loading import load_draft, load_model, load_tokenizer
    from edgespec.models.target import TargetRuntime
    from edgespec.prompting import eos_token_ids, render_prompt
    from edgespec.server.app import RunningServer, ServerConfig, serve
    from edgespec.sim.simulate import SimConfig, simulate
    from edgespec.transport.security import ClientSecurity
