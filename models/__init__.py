"""Flax NNX language models and PRMs, Hugging Face safetensors loading, batched sampling."""
