"""Fine-tuning data and objective: examples -> padded batches (a rank's slice under data
parallelism), the CE + beta*KL objective, validation, the canonical adapter save.

p_base is the same model with its adapter disabled (peft's `disable_adapter()` under no_grad):
one copy of the weights in memory, whatever the model's size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from stages.common.atomic import write_json
from stages.common.chat import prompt_ids, response_ids
from stages.common.errors import PipelineError

SET_VALUED_CONFIG_KEYS = ("target_modules", "exclude_modules", "modules_to_save", "layers_to_transform")

IGNORE = -100

T = TypeVar("T")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt positions: only the response is scored
    kl_only: bool = False  # an anchor: scored by the KL to the base alone, never by CE
    kl_weight: float = 1.0  # this example's KL weighs kl_weight x beta (anchors: train.anchor_kl_weight)


def encode(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int) -> list[Example]:
    """Chat-formatted examples, the prompt masked out, truncated from the prompt's left so the
    response (what is learned) survives."""
    return [example(prompt_ids(tokenizer, prompt), response_ids(tokenizer, response), max_len)
            for prompt, response in pairs]


def example(prompt: list[int], response: list[int], max_len: int) -> Example:
    """One turn from its token ids: the response scored, cut to max_len from the prompt's left."""
    r = response[: max_len - 1]
    p = prompt[-(max_len - len(r)):]
    return Example(p + r, [IGNORE] * len(p) + r)


def encode_text(tokenizer, texts: Sequence[str], max_len: int) -> list[Example]:
    """Plain-text replay windows: every token is scored (CE and KL), as in pre-training."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out += [Example(ids[i : i + max_len], ids[i : i + max_len]) for i in range(0, len(ids) - 1, max_len)
                if len(ids[i : i + max_len]) > 1]
    return out


def replay_sample(windows: Sequence[T], n_task: int, fraction: float, seed: int) -> list[T]:
    """`fraction` of the mix (after adding them) drawn from `windows`: replay text, safety turns."""
    n = min(len(windows), round(n_task * fraction / (1 - fraction)))
    return random.Random(seed).sample(list(windows), n)


def collate(examples: Sequence[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch with its attention mask; labels align with input_ids (`objective` shifts)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    kl_only = torch.tensor([e.kl_only for e in examples], dtype=torch.bool)
    kl_weight = torch.tensor([e.kl_weight for e in examples], dtype=torch.float32)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "kl_only": kl_only.to(device), "kl_weight": kl_weight.to(device)}


def batches(examples: Sequence[Example], batch_size: int, seed: int, rank: int = 0,
            world: int = 1) -> Iterator[list[Example]]:
    """Endless shuffled batches, a fresh seeded order each epoch. Under data parallelism every
    rank draws the same global batch of batch_size x world (same seed) and keeps its own slice,
    so the ranks see disjoint examples and together the batch one process of that size would."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    size = batch_size * world
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [examples[j] for j in order[i + rank * batch_size : i + (rank + 1) * batch_size]]


def mix_general(domain: Sequence[tuple[str, str]], general: Sequence[tuple[str, str]], fraction: float,
                seed: int) -> list[tuple[str, str]]:
    """Domain pairs plus general pairs making up `fraction` of the result (against forgetting)."""
    n_general = min(len(general), round(len(domain) * fraction / (1 - fraction)))
    return list(domain) + random.Random(seed).sample(list(general), n_general)


def save_adapter(peft_model, out: Path) -> None:
    """save_pretrained, then adapter_config.json with sorted lists and keys: peft keeps
    target_modules as a set, whose order changes with each process's hash seed, and the same
    adapter must give the same bytes (else DVC re-runs everything after train)."""
    peft_model.save_pretrained(out, safe_serialization=True)
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    for key, value in config.items():
        if key in SET_VALUED_CONFIG_KEYS and isinstance(value, list):
            config[key] = sorted(value)
    write_json(path, config)


def check_targets(model, targets: Sequence[str]) -> None:
    """Every LoRA target names a linear layer of the model; else list the ones it has."""
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise PipelineError(f"model.lora_targets: {missing} not in the model; its linear layers are {linear}")


def scored_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions the objective scores (labels shifted by one, prompt positions ignored)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def kl_per_position(logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """(batch, positions): KL(p_theta || p_base) = sum_v p_theta (log p_theta - log p_base)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(base_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def objective(model, batch: dict[str, torch.Tensor], beta: float, with_kl: bool, peft_model=None,
              normalizer: float | None = None) -> dict[str, torch.Tensor]:
    """CE on response tokens and KL to the base on the same positions, as per-token means
    (`ce`, `kl`), and `loss` = (summed CE + beta * summed KL) / normalizer, each example's KL
    weighted by its `kl_weight` in the loss (the reported `kl` is unweighted).

    The normalizer defaults to this batch's scored tokens (loss = mean CE + beta * mean KL). The
    training loop passes the scored tokens of the whole optimizer step instead (every
    micro-batch, every rank), so each token weighs the same wherever it falls: the gradient a
    single process would get from the whole global batch.

    `model` may be a DDP/FSDP wrapper (its forward syncs gradients); `peft_model` is the
    unwrapped peft model whose adapter is disabled for the base forward. The base forward runs
    only when beta > 0 or `with_kl` asks for the KL (validation): beta = 0 is exactly plain LoRA.
    """
    peft_model = peft_model or model
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = (labels != IGNORE).float()
    count = mask.sum().clamp(min=1)
    kl_only = batch.get("kl_only")
    ce_labels = labels if kl_only is None else labels.masked_fill(kl_only[:, None], IGNORE)
    ce_sum = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), ce_labels.reshape(-1), ignore_index=IGNORE,
                             reduction="sum")
    out = {"ce": ce_sum.detach() / (ce_labels != IGNORE).sum().clamp(min=1)}
    total = ce_sum
    if beta > 0 or with_kl:
        with torch.no_grad(), peft_model.disable_adapter():
            base_logits = peft_model(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).logits[:, :-1]
        kl = kl_per_position(logits, base_logits)
        kl_sum = (kl * mask).sum()
        out["kl"] = kl_sum.detach() / count
        weight = batch.get("kl_weight")
        if weight is not None and bool((weight != 1).any()):
            kl_sum = (kl * mask * weight[:, None]).sum()
        if beta > 0:
            total = total + beta * kl_sum
    out["loss"] = total / (count if normalizer is None else normalizer)
    return out


@torch.no_grad()
def validate(model, examples: Sequence[Example], batch_size: int, pad_id: int, beta: float) -> dict[str, float]:
    """Token-weighted CE and KL over the whole validation set, and loss = CE + beta * KL."""
    model.eval()
    totals = {"ce": 0.0, "kl": 0.0}
    count = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk, pad_id, model.device)
        n = scored_tokens(batch)
        out = objective(model, batch, beta, with_kl=True)
        totals["ce"] += float(out["ce"]) * n
        totals["kl"] += float(out["kl"]) * n
        count += n
    model.train()
    ce, kl = totals["ce"] / count, totals["kl"] / count
    return {"ce": ce, "kl": kl, "loss": ce + beta * kl}
