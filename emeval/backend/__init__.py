"""Fast local generation: the `emeval/<model dir>` Inspect provider and its engines.

The public face: the provider (registered with Inspect as `emeval/`) and its model API, and
the sampling parameters and completions the engines speak. The engines themselves (engine.py,
vllm_engine.py, runners.py, compute.py) are chosen by the provider."""

from emeval.backend.params import Completion, SamplingParams
from emeval.backend.provider import EmevalLocalAPI, emeval_provider

__all__ = ["Completion", "EmevalLocalAPI", "SamplingParams", "emeval_provider"]
