"""The shipped tokenizer: a small byte-level BPE trained on the task texts.

Built deterministically (fixed seeded corpus of Countdown and arithmetic
prompts and traces), so every build gives the same vocabulary. Pre-tokenizer:
digits split one per token, then GPT-2's byte-level split; so numbers are
always single digits (arithmetic stays learnable) and a merge never crosses
a digit. Special tokens `<pad>`, `<bos>`, `<eos>` are ids 0, 1, 2; `encode`
adds none of them (callers prepend `<bos>` and append `<eos>` themselves), so
`decode(encode(s)) == s` for every string.

Step delimiter: "\\n" is its own token (`step_end_ids` lists every token whose
text contains a newline; on the task texts that is the single "\\n" token). A
step ends at one of those ids or at `<eos>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ppl.tasks import arithmetic, countdown

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
VOCAB_SIZE = 384
CORPUS_SEED = 0
CORPUS_PROBLEMS = 200  # per task


def corpus(seed: int = CORPUS_SEED, n: int = CORPUS_PROBLEMS) -> list[str]:
    """Prompt + solution texts of `n` problems of each task, the training corpus of the BPE."""
    texts = [
        countdown.prompt(p) + countdown.format_solution(countdown.solutions(p)[0]) for p in countdown.generate(seed, n)
    ]
    texts += [arithmetic.prompt(e) + arithmetic.format_solution(e) for e in arithmetic.generate(seed, n)]
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the shipped byte-level BPE on `corpus()`; same result on every call."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        clean_up_tokenization_spaces=False,
    )


def step_end_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids of the tokens that end a step: every token whose text contains a newline."""
    return sorted(i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t]))
