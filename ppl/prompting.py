"""Prompts as each model expects them: the LM's chat template, and the PRM's own format.

`chat_prompt` renders a question with the LM tokenizer's chat template (system message, generation
prompt on). `prm_prompt` renders the same question in the PRM's format, which differs by convention:
Qwen2.5-Math-PRM reads its chat template with the steps as the assistant's turn, each followed by
`<extra_0>`; Math-Shepherd (and a PRM without a template) reads the question, a newline, then each step
followed by its tag. The steps themselves are the LM's tokens, shown without their trailing delimiter
(`reasoning.strip_end`), so LM and PRM must share a vocabulary (`check_same_vocabulary`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ppl.errors import InputError

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
_SENTINEL = "\u0000PPL-STEPS\u0000"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, system: str | None, use_template: bool = True) -> Callable[[str], str]:
    """question -> the LM's prompt text: its chat template with a generation prompt, or (no template, or
    `use_template=False`) the system prompt, a blank line and the question, then a blank line."""
    if use_template and has_chat_template(tokenizer):
        def render(question: str) -> str:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": question}
            ]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return render
    return lambda question: (f"{system}\n\n" if system else "") + f"{question}\n\n"


def prm_prompt(tokenizer: Any, system: str | None) -> Callable[[str], str]:
    """question -> the text a PRM reads before the first step, in its own format.

    With a chat template: the conversation (system, user question) and the assistant's turn up to
    where its content begins (Qwen2.5-Math-PRM); the steps follow, each with its step tag. Without:
    the question and a newline (Math-Shepherd).
    """
    if not has_chat_template(tokenizer):
        return lambda question: f"{question}\n"

    def render(question: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question},
            {"role": "assistant", "content": _SENTINEL},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if _SENTINEL not in text:
            raise InputError("the PRM's chat template does not show the assistant's turn; pass a PRM whose "
                             "template renders assistant messages")
        return text[: text.index(_SENTINEL)]

    return render


def hidden_at_end(token_bytes: np.ndarray, eos_ids: tuple[int, ...]) -> np.ndarray:
    """[V] bool: the tokens a PRM is not shown at the end of a step: whitespace-only tokens (the step
    delimiter) and EOS. `token_bytes` is `StopTable.token_bytes` on the host ([V, L], -1 padded)."""
    valid = token_bytes >= 0
    space = np.isin(token_bytes, list(b" \t\n\r")) | ~valid
    hidden = np.all(space, axis=1) & np.any(valid, axis=1)
    hidden[[i for i in eos_ids if i < hidden.shape[0]]] = True
    return hidden


def check_same_vocabulary(lm_tokenizer: Any, prm_tokenizer: Any) -> None:
    """Raise InputError unless every token of the LM means the same to the PRM (the PRM may add tokens of
    its own, such as a step tag): the PRM reads the LM's token ids as they are, on device."""
    lm_vocab, prm_vocab = lm_tokenizer.get_vocab(), prm_tokenizer.get_vocab()
    differ = [t for t, i in lm_vocab.items() if prm_vocab.get(t) != i]
    if differ:
        raise InputError(
            f"the LM and the PRM have different vocabularies ({len(differ)} of the LM's {len(lm_vocab)} tokens "
            f"differ, e.g. {differ[0]!r}); ppl solve needs a PRM that shares the LM's tokenizer "
            "(e.g. Qwen2.5-Math-1.5B-Instruct with Qwen2.5-Math-PRM-7B)"
        )
