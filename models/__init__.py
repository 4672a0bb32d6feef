"""Flax NNX language models and PRMs, Hugging Face safetensors loading, batched sampling."""

from models.llama import Config, KVCache, Llama
from models.loading import CheckpointError, UnsafeCheckpointError, UnsupportedModelError, load

__all__ = ["Config", "KVCache", "Llama", "load", "CheckpointError", "UnsafeCheckpointError", "UnsupportedModelError"]
