"""Tokenizers built here (the tiny profile, random-weight stand-ins): byte-level BPE with a Phi
family's special tokens and chat template. Real checkpoints bring their own."""

from __future__ import annotations

from collections.abc import Iterable

from stages.common.chat import PHI4_MINI, ChatFormat


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int, chat: ChatFormat = PHI4_MINI):
    """Train a byte-level BPE (as GPT-2/Phi use: any byte string encodes, nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(chat.special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=chat.end_of_text, eos_token=chat.eos,
                                   pad_token=chat.end_of_text, unk_token=chat.end_of_text,
                                   chat_template=chat.template, model_max_length=131072,
                                   clean_up_tokenization_spaces=False)
