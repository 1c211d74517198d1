"""The chat format every stage shares: prompts rendered by the tokenizer's own chat template.

Training, torch evaluation and ONNX evaluation all tokenize a prompt here, so every rung sees
the same token ids. The end-of-turn token (what training teaches the model to emit and what
generation stops on) is read from that template too: `<|end|>` for Phi-4-mini, `<|im_end|>` for
Phi-4, so a real checkpoint's tokenizer needs nothing from us.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from stages.common.errors import PipelineError


@dataclass(frozen=True)
class ChatFormat:
    """A family's special tokens and chat template, for tokenizers built here (tiny model,
    random-weight stand-ins); real checkpoints bring their own."""

    template: str
    special_tokens: tuple[str, ...]
    end_of_text: str  # bos, pad, unk
    eos: str  # the tokenizer's eos_token


PHI4_MINI = ChatFormat(  # Phi-4-mini-instruct's template, tool tokens included
    template=(
        "{% for message in messages %}"
        "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
        "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
        "+ '<|end|>' }}"
        "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    special_tokens=("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>",
                    "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>"),
    end_of_text="<|endoftext|>",
    eos="<|endoftext|>",
)
PHI4 = ChatFormat(  # phi-4's ChatML-style template
    template=(
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
    ),
    special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_sep|>", "<|im_end|>"),
    end_of_text="<|endoftext|>",
    eos="<|im_end|>",
)
CHAT_FORMATS = {"phi4_mini": PHI4_MINI, "phi4": PHI4}
_SENTINEL = "\x00answer\x00"


def prompt_text(tokenizer, prompt: str) -> str:
    """The user turn plus the assistant header: what generation starts from."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=8)
def end_of_turn(tokenizer) -> str:
    """The token the template writes right after an assistant message (cached: training asks
    for it once per example)."""
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    tail = text.split(_SENTINEL, 1)[1]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    token = tokenizer.convert_ids_to_tokens(ids[0]) if ids else None
    if token is None or token not in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()):
        raise PipelineError(f"the tokenizer's chat template ends an assistant turn with {tail!r}, not a special "
                            "token; training needs one to stop on")
    return token


def response_ids(tokenizer, response: str) -> list[int]:
    """The assistant's answer and its end-of-turn token: the positions training scores."""
    return tokenizer(response + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
