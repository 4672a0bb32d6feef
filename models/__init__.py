"""Flax NNX language models and PRMs, Hugging Face safetensors loading, batched sampling."""

import os

# transformers supplies configs and tokenizers only; its import-time advice to install PyTorch is
# noise for Flax models. Advisory warnings only: its real warnings and errors still show.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from models.llama import Config, KVCache, Llama
from models.loading import CheckpointError, UnsafeCheckpointError, UnsupportedModelError, load

__all__ = ["Config", "KVCache", "Llama", "load", "CheckpointError", "UnsafeCheckpointError", "UnsupportedModelError"]
