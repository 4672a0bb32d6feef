"""A small byte-level BPE tokenizer trained on a corpus, as the shipped models use.

Deterministic: the same corpus gives the same vocabulary (the shipped corpus is
`ppl.train.tokenizer_corpus`). Pre-tokenizer: digits split one per token, then
GPT-2's byte-level split; so numbers are always single digits (arithmetic stays
learnable) and a merge never crosses a digit. Special tokens `<pad>`, `<bos>`,
`<eos>` are ids 0, 1, 2; `encode` adds none of them (callers prepend `<bos>` and
append `<eos>` themselves), so `decode(encode(s)) == s` for every string.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
VOCAB_SIZE = 384


def train_bpe(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on `corpus`; the same corpus gives the same tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,
    )
