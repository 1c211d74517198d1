"""The chat format every stage shares: prompts rendered by the tokenizer's own chat template.

Training, torch evaluation and ONNX evaluation all tokenize a prompt here, so every rung sees
the same token ids.
"""

from __future__ import annotations

# Phi-4-mini-instruct's template (tool tokens included), written by the base stage for the tiny model.
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
END_OF_TURN = "<|end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, "<|system|>", "<|user|>", "<|assistant|>", END_OF_TURN,
                  "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>"]


def prompt_text(tokenizer, prompt: str) -> str:
    """The user turn plus the assistant header: what generation starts from."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def response_ids(tokenizer, response: str) -> list[int]:
    """The assistant's answer and its end-of-turn token: the positions training scores."""
    return tokenizer(response + END_OF_TURN, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (END_OF_TURN, END_OF_TEXT)]
    ids = [i for i in ids if i is not None and i != tokenizer.unk_token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
