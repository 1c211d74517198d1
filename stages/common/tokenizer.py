"""The tiny profile's tokenizer: byte-level BPE with Phi-style special tokens and chat template."""

from __future__ import annotations

from collections.abc import Iterable

from stages.common.chat import END_OF_TEXT, PHI4_MINI_CHAT_TEMPLATE, SPECIAL_TOKENS


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int):
    """Train a byte-level BPE (as GPT-2/Phi use: any byte string encodes, nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT, unk_token=END_OF_TEXT,
                                   chat_template=PHI4_MINI_CHAT_TEMPLATE, model_max_length=131072,
                                   clean_up_tokenization_spaces=False)
