"""Tokenizers of the zoo, saved as folders that ``AutoTokenizer.from_pretrained(dir)`` loads offline.

* ``train_bpe``: a byte-level BPE (GPT-2 style pre-tokenisation, Sennrich et al. 2016 merges on
  bytes as in Radford et al. 2019) trained with ``tokenizers`` on the corpus train split. Special
  tokens: ``<|endoftext|>`` (EOS and pad, also the separator between works) and ``<|bos|>``.
* ``char_tokenizer``: one token per printable ASCII character (no merges), for the induction toy
  model, whose inputs are random strings: ``"abcabc"`` is six tokens, so induction is readable.

TransformerLens prepends ``bos_token`` itself, so the tokenizers add no special tokens on encode.
A folder is needed because TransformerLens reloads the tokenizer by ``name_or_path``.
"""

from __future__ import annotations

import string
from pathlib import Path

EOS = "<|endoftext|>"
BOS = "<|bos|>"
SPECIALS = (EOS, BOS)
CHARS = string.printable[:95]  # digits, letters, punctuation, space (no \t\n\r\x0b\x0c)


def train_bpe(text: str, vocab_size: int = 4096):
    """Train a byte-level BPE on ``text``; returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 300 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be in [300, 65535] (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # one "document" per line keeps the trainer's memory small; merges never cross newlines anyway
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    return tok


def char_tokenizer():
    """A character-level tokenizer over printable ASCII plus the two special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({c: len(SPECIALS) + i for i, c in enumerate(CHARS)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def save_folder(tok, folder: Path, model_max_length: int):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer and save it to ``folder``."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return load_folder(folder)


def load_folder(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
