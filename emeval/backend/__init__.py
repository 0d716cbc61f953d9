"""Fast local generation: the `emeval/<model dir>` Inspect provider and its engines.

The public face: the provider (registered with Inspect as `emeval/`) and its model API, and
the sampling parameters and completions the engines speak. The engines themselves (engine.py,
vllm_engine.py, runners.py, compute.py) are chosen by the provider.

The provider is imported on first use, not here: the engines also run where Inspect is not
installed (CI's vLLM virtualenv holds emeval without its dependencies)."""

from emeval.backend.params import Completion, SamplingParams

__all__ = ["Completion", "EmevalLocalAPI", "SamplingParams", "emeval_provider"]


def __getattr__(name: str):
    if name in ("EmevalLocalAPI", "emeval_provider"):
        from emeval.backend import provider

        return getattr(provider, name)
    raise AttributeError(f"module 'emeval.backend' has no attribute {name!r}")
