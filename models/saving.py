"""Save our Flax Llama as a Hugging Face checkpoint directory (the inverse of `models.loading`).

The directory holds `config.json` (a transformers `LlamaConfig`),
`model.safetensors` (HF tensor names, linear weights as [out, in]),
`generation_config.json` and the tokenizer files, so both `models.load` and
transformers' `AutoModelForCausalLM.from_pretrained` read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from models.llama import Llama
from models.loading import LM_PREFIX, hf_name


def hf_config(model: Llama, tokenizer: Any) -> dict:
    """The config.json fields of `model` (transformers' LlamaConfig, all fields filled in)."""
    from transformers import LlamaConfig

    c = model.config
    if c.qk_norm or c.sliding_window is not None:
        raise ValueError("only the plain Llama architecture (no q/k norm, no sliding window) can be saved")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_llama3 is not None:
        factor, low, high, original = c.rope_llama3
        rope = dict(
            rope, rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
            original_max_position_embeddings=original,
        )
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=rope,
        attention_bias=c.attention_bias,
        tie_word_embeddings=c.tie_embeddings,
        max_position_embeddings=c.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
        dtype=str(np.dtype(model.dtype)),
    )
    return config.to_dict()


def hf_tensors(model: Llama) -> dict[str, np.ndarray]:
    """Every parameter under its HF name, linear kernels transposed back to [out, in]."""
    tensors = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, transposed = hf_name(path)
        value = np.asarray(variable.get_value())
        tensors[LM_PREFIX.get(str(path[0]), "") + name] = np.ascontiguousarray(value.T if transposed else value)
    return tensors


def save_pretrained(model: Llama, path: str | os.PathLike, tokenizer: Any, extra_config: dict | None = None) -> None:
    """Write `model` and `tokenizer` to the HF directory `path`; `extra_config` adds keys to config.json."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(model, tokenizer)
    config.update(extra_config or {})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_file(hf_tensors(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)
