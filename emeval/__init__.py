"""emeval: measure emergent misalignment in fine-tuned language models."""

__version__ = "0.1.0"
