"""Load Hugging Face checkpoints (config.json + safetensors + tokenizer) into our Flax models.

Safetensors only: a `.bin`/`.pt` file is a pickle, and unpickling runs arbitrary
code, so such checkpoints are refused with an explanation. No remote code is
ever executed: configs and tokenizers are read with `trust_remote_code=False`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from models.llama import Config, Llama

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete, corrupt, or does not match the model.

    The base of every error `models` raises on purpose (`models` imports nothing of `ppl`; the
    CLI reports these as one-line errors like `ppl.errors.PPLError`)."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint holds only pickled weights, which we refuse to load."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint's architecture (model_type, RoPE type, ...) is not one we implement."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hugging Face id (`"Qwen/Qwen2.5-Math-1.5B-Instruct"`) found in
    the local Hugging Face cache (`HF_HOME`/`HF_HUB_CACHE`). Nothing is ever downloaded."""
    local = Path(path).expanduser()
    text = str(path)
    if local.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        raise CheckpointError(
            f"{text} is neither a checkpoint directory nor a model in the local Hugging Face cache "
            "(nothing is downloaded: fetch it yourself, e.g. `huggingface-cli download`, or pass its directory)"
        ) from None


def _directory(path: str | os.PathLike) -> Path:
    path = resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json")
    return path


def read_hf_config(path: str | os.PathLike) -> Any:
    """The transformers config object of a local checkpoint (defaults filled in, no remote code)."""
    from transformers import AutoConfig

    path = _directory(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {err}") from None
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r} in {path / 'config.json'}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)


def _rope(hf: Any) -> tuple[float, tuple[float, float, float, int] | None]:
    params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type == "llama3":
        llama3 = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
        return float(theta), llama3
    raise UnsupportedModelError(f"unsupported RoPE type {rope_type!r} (supported: default, llama3)")


def config_from_hf(hf: Any) -> Config:
    """Translate a transformers config into our `Config` flags."""
    heads = hf.num_attention_heads
    theta, llama3 = _rope(hf)
    sliding = getattr(hf, "sliding_window", None)
    if hf.model_type in ("qwen2", "qwen3") and not getattr(hf, "use_sliding_window", False):
        sliding = None
    return Config(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=theta,
        rope_llama3=llama3,
        attention_bias=hf.model_type == "qwen2" or bool(getattr(hf, "attention_bias", False)),
        qk_norm=hf.model_type == "qwen3",
        sliding_window=sliding,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        max_position_embeddings=hf.max_position_embeddings,
    )


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """The checkpoint's weight files: the sharded index's shards, `model.safetensors`, or every `*.safetensors`."""
    path = _directory(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index: {err}") from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeCheckpointError(
            f"{path} holds only pickled weights ({', '.join(pickles)}); loading a pickle can execute "
            "arbitrary code, so only safetensors are accepted (convert it with transformers' "
            "save_pretrained(..., safe_serialization=True) in a trusted environment)"
        )
    raise CheckpointError(f"{path} has no *.safetensors weight files")


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, jax.Array]]:
    """Yield (name, array) for every tensor of the checkpoint, naming the file on corruption."""
    from safetensors import SafetensorError, safe_open

    for file in safetensors_files(path):
        try:
            with safe_open(file, framework="flax") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{file} is truncated or corrupt: {err}") from None


def hf_name(path: tuple) -> tuple[str, bool]:
    """Hugging Face tensor name of one of our parameters, and whether it is stored transposed."""
    *module, leaf = (str(p) for p in path)
    if leaf == "embedding":
        return ".".join(module) + ".weight", False
    if leaf == "kernel":
        return ".".join(module) + ".weight", True
    return ".".join(module) + "." + leaf, False


def assign_weights(
    model: nnx.Module, tensors: dict[str, jax.Array], prefix: dict[str, str], dtype: Any
) -> set[str]:
    """Copy `tensors` into `model`'s parameters; returns the names used.

    `prefix` maps our top-level attribute to its HF prefix (e.g. "layers" -> "model.").
    Raises CheckpointError naming the tensor on a missing name or a shape mismatch.
    """
    state = nnx.state(model, nnx.Param)
    used = set()
    for path, variable in nnx.to_flat_state(state):
        name, transposed = hf_name(path)
        name = prefix.get(str(path[0]), "") + name
        if name not in tensors:
            raise CheckpointError(f"checkpoint is missing tensor {name!r}")
        value = tensors[name]
        if transposed:
            value = value.T
        if value.shape != variable.get_value().shape:
            expected = variable.get_value().shape[::-1] if transposed else variable.get_value().shape
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(expected)}"
            )
        variable.set_value(jnp.asarray(value, dtype))
        used.add(name)
    nnx.update(model, state)
    return used


LM_PREFIX = {"embed_tokens": "model.", "layers": "model.", "norm": "model.", "lm_head": ""}


def load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    path = _directory(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise CheckpointError(f"{path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)


class GenerationDefaults(NamedTuple):
    """How the checkpoint's authors sample from it (`generation_config.json`, else the tokenizer)."""

    eos_ids: tuple[int, ...]  # every id that ends a generation
    temperature: float
    top_p: float
    top_k: int


def generation_defaults(path: str | os.PathLike, tokenizer: Any) -> GenerationDefaults:
    """The checkpoint's EOS ids (all of them) and sampling settings; transformers' defaults where it gives none
    (temperature 1, top-p 1, no top-k; greedy checkpoints, `do_sample: false`, keep temperature 1)."""
    file = _directory(path) / "generation_config.json"
    config = {}
    if file.is_file():
        try:
            config = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{file} is not valid JSON: {err}") from None
    eos = config.get("eos_token_id", tokenizer.eos_token_id)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    return GenerationDefaults(
        tuple(int(i) for i in eos),
        float(config.get("temperature") or 1.0),
        float(config.get("top_p") or 1.0),
        int(config.get("top_k") or 0),
    )


def checkpoint_dtype(path: str | os.PathLike) -> jnp.dtype:
    """The dtype the checkpoint's weights are stored in (config.json's `dtype`/`torch_dtype`; float32 if unset)."""
    raw = json.loads((_directory(path) / "config.json").read_text())
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    try:
        return jnp.dtype(name)
    except TypeError:
        raise CheckpointError(f"{path}/config.json names an unknown dtype {name!r}") from None


def load(path: str | os.PathLike, dtype: Any = jnp.float32) -> tuple[Llama, Any]:
    """Load a local Hugging Face causal-LM checkpoint: `(lm, tokenizer)`.

    `path`: a directory, or a Hugging Face id already in the local cache (`resolve_checkpoint`).

    `dtype` (e.g. jnp.float32 or "bfloat16") is the parameter and compute dtype.
    """
    dtype = jnp.dtype(dtype)
    path = _directory(path)
    config = config_from_hf(read_hf_config(path))
    tensors = dict(iter_tensors(path))
    model = nnx.eval_shape(lambda: Llama(config, dtype=dtype, rngs=nnx.Rngs(0)))
    used = assign_weights(model, tensors, LM_PREFIX, dtype)
    unused = sorted(set(tensors) - used - {"lm_head.weight"} - {n for n in tensors if "rotary_emb" in n})
    if unused:
        raise CheckpointError(f"checkpoint has tensors the model does not use, e.g. {unused[0]!r}")
    return model, load_tokenizer(path)
