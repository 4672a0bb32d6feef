"""Prompts in fixed shapes: token ids padded to a length bucket, problems in fixed-size chunks,
so a run over hundreds of problems compiles once per (method, budget, bucket)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PROMPT_BUCKET = 16  # prompt lengths are padded up to a multiple of this
PARTICLE_ROWS = 1024  # particles run together: problems per chunk = PARTICLE_ROWS // particles


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids of each prompt text, left-padded to a bucket: tokens and mask [P, 1, width]
    (left padding, so every prompt ends where its trace begins).

    Special tokens in the text (a chat template's) are read as such; BOS is prepended unless
    the text already starts with it, so a template that writes its own BOS gets exactly one.
    """
    bos = tokenizer.bos_token_id
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    ids = [x if bos is None or x[:1] == [bos] else [bos, *x] for x in ids]
    width = -(-max(len(x) for x in ids) // PROMPT_BUCKET) * PROMPT_BUCKET
    tokens = np.zeros((len(ids), 1, width), np.int32)
    mask = np.zeros((len(ids), 1, width), bool)
    for i, x in enumerate(ids):
        tokens[i, 0, width - len(x):] = x
        mask[i, 0, width - len(x):] = True
    return tokens, mask


def chunks(
    num_problems: int, particles: int, rows: int = PARTICLE_ROWS
) -> Iterator[tuple[list[int], list[int]]]:
    """`(chunk, padded)` index lists covering the problems in order: `chunk` the problems of one
    run, `padded` the same with its last problem repeated up to the fixed chunk size. Runs hold at
    most `rows // particles` problems, and as few runs as that allows share the problems evenly
    (100 problems at 64 per run: two runs of 50, not 64 and 36 padded to 64)."""
    most = max(1, rows // particles)
    size = -(-num_problems // -(-num_problems // most))
    for start in range(0, num_problems, size):
        chunk = list(range(start, min(start + size, num_problems)))
        yield chunk, chunk + [chunk[-1]] * (size - len(chunk))
