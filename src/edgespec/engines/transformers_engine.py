"""The `transformers` engine: today's ``TargetRuntime`` (eager PyTorch, every Llama/Qwen2/Mistral
causal LM, early exits through forward hooks), named as an engine. Its behaviour is exactly the
runtime's: this adapter adds the name benchmarks report and nothing else."""

from __future__ import annotations

from edgespec.models.target import TargetRuntime


class TransformersEngine(TargetRuntime):
    """``TargetRuntime`` as a ``TargetEngine``: the engine for exits research and accelerators."""

    engine_name = "transformers"
