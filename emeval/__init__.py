"""emeval: measure emergent misalignment in fine-tuned language models.

The root imports nothing, so `emeval --help` starts fast and the generation engines load where
Inspect is absent (CI's vLLM virtualenv); each package names its public face in `__all__`
(emeval.backend, emeval.judging, emeval.training, emeval.reporting)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
