"""train: LoRA on the base with a KL leash, the best adapter kept, and the merged model saved.

    loss = CE(response tokens) + kl_beta * KL(p_theta || p_base)

p_base is the same model with the adapter disabled (no second copy). Against forgetting, a share
of general-task examples (train.general_mix) is mixed in, and a share of plain general-text
windows (train.replay_mix), scored on every token, so that the KL leash also holds the model's
distribution on ordinary text, not only on answers. AdamW with weight decay on the LoRA
parameters, warmup then cosine or constant, gradient accumulation and clipping; validation on the
held-out domain set every eval_every steps, early stopping after `patience` validations without
improvement.

    python -m stages.train train.kl_beta=0.1 train.lora.r=4
    accelerate launch --config_file conf/accelerate/ddp.yaml -m stages.train   # data parallel

Under `accelerate launch` every rank takes its own slice of each global batch
(batch_size x processes), the schedule steps once per optimizer step, and only the main process
logs and writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.chat import prompt_ids, stop_token_ids
from stages.common.checkpoint import base_checkpoint, load_causal_lm, load_tokenizer, torch_dtype
from stages.common.errors import PipelineError
from stages.common.finetune import (
    Example,
    batches,
    check_targets,
    collate,
    encode,
    encode_text,
    example,
    mix_general,
    objective,
    replay_sample,
    save_adapter,
    scored_tokens,
    validate,
)
from stages.common.lm import torch_greedy_batch
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, progress, seed_everything, stage_main

log = get_logger(__name__)


def run(cfg: DictConfig) -> None:
    from accelerate import Accelerator

    t = cfg.train
    seed_everything(cfg.seed)
    start = time.perf_counter()
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum, cpu=cfg.model.device == "cpu")

    tokenizer = load_tokenizer(base_checkpoint(cfg))
    train_set, val_set = training_data(cfg, tokenizer)
    model = lora_model(cfg)
    fitted = fit(cfg, accelerator, model, train_set, val_set, tokenizer.pad_token_id)

    accelerator.wait_for_everyone()  # every rank done before the main one writes
    if accelerator.is_main_process:
        save(cfg, fitted, tokenizer, examples=len(train_set), processes=accelerator.num_processes,
             seconds=time.perf_counter() - start)
    accelerator.wait_for_everyone()


def pairs(rows: list[dict], answer_field: str) -> list[tuple[str, str]]:
    for row in rows:
        if not row[answer_field].strip():
            raise PipelineError(f"record {row['id']!r}: empty {answer_field}; nothing to learn from")
    return [(row["prompt"], row[answer_field]) for row in rows]


def training_data(cfg: DictConfig, tokenizer) -> tuple[list[Example], list[Example]]:
    """The clean domain set with its general mix and replay windows; the held-out domain set.

    train.safety_mix is the share of the mix made of the base's own safety turns (data.safety_train:
    refusals of red-team asks, answers to their look-alikes; and data.safety_anchors, the same asks
    in other wordings, never pre-trained on): the domain data holds no refusal,
    and the KL leash only holds the positions it scores, so without them LoRA unlearns refusing.
    They are scored by CE and the KL to the base (the default: CE widens the margin of the
    base's own decisions, refusing and answering alike, so a LoRA's drift flips fewer of them),
    or with train.safety_kl_only by the KL alone; train.anchor_kl_weight multiplies β on their
    tokens, a leash on the safety turns that does not hold back the domain. train.anchor_answers=base replaces the set's
    answers with the base's own greedy ones (a real model's refusals are its own words).
    train.domain_kl_weight multiplies β on the
    domain answers (validation included): 0 leaves them to CE alone, for a base whose prior on
    the labels is far off (README "The ladder on real weights"). README, "Safety and degeneration"."""
    t = cfg.train
    domain = pairs(read_jsonl(layout.CLEAN_TRAIN, "instruction"), "response")
    general = pairs(read_jsonl(cfg.data.general_task_train, "instruction"), "response")
    train_set = encode(tokenizer, mix_general(domain, general, t.general_mix, cfg.seed), t.max_seq_len)
    for e in train_set[: len(domain)]:  # mix_general puts the domain pairs first
        e.kl_weight = float(t.domain_kl_weight)
    if t.safety_mix > 0 and cfg.data.safety_train:
        rows = read_jsonl(cfg.data.safety_train, "instruction")
        if cfg.data.safety_anchors:  # more wordings of the same asks: the leash holds where it is applied
            rows += read_jsonl(cfg.data.safety_anchors, "instruction")
        chosen = replay_sample(pairs(rows, "response"), len(train_set), t.safety_mix, cfg.seed)
        if t.anchor_answers == "base":
            prompts = [prompt_ids(tokenizer, prompt) for prompt, _ in chosen]
            turns = [example(p, r, t.max_seq_len) for p, r in zip(prompts, base_answers(cfg, tokenizer, prompts),
                                                                     strict=True)]
        else:
            turns = encode(tokenizer, chosen, t.max_seq_len)
        for e in turns:
            e.kl_only, e.kl_weight = bool(t.safety_kl_only), float(t.anchor_kl_weight)
        train_set += turns
    if t.replay_mix > 0:
        corpus = encode_text(tokenizer, [r["text"] for r in read_jsonl(cfg.data.general_corpus, "text")], t.max_seq_len)
        train_set += replay_sample(corpus, len(train_set), t.replay_mix, cfg.seed)
    val_set = encode(tokenizer, pairs(read_jsonl(cfg.data.eval.domain_val, "task"), "answer"), t.max_seq_len)
    if len(train_set) < t.batch_size:
        raise PipelineError(f"{len(train_set)} training examples, fewer than one batch ({t.batch_size})")
    return train_set, val_set


def base_answers(cfg: DictConfig, tokenizer, prompts: list[list[int]], batch: int = 16) -> list[list[int]]:
    """The base's own greedy answer to each prompt, with the end-of-turn token where it stopped
    (train.anchor_answers=base): a real model refuses in its own words, and a KL anchor on a
    refusal text it never says holds only the first position (README "The ladder on real weights")."""
    n = cfg.train.anchor_answer_tokens
    stop = stop_token_ids(tokenizer)
    model = load_causal_lm(base_checkpoint(cfg), cfg.model.dtype, "cpu")
    out = []
    for start in progress(range(0, len(prompts), batch), desc="base answers to the anchors",
                          total=-(-len(prompts) // batch)):
        out += [ids + stop[:1] if len(ids) < n else ids
                for ids in torch_greedy_batch(model, prompts[start : start + batch], n, stop)]
    return out


def load_for_training(cfg: DictConfig):
    """The base in the profile's dtype, or 4-bit NF4 for QLoRA (GPU + bitsandbytes only)."""
    if not cfg.train.qlora:
        return load_causal_lm(base_checkpoint(cfg), cfg.model.dtype, "cpu")
    if not torch.cuda.is_available():
        raise PipelineError("train.qlora=true needs a CUDA GPU (bitsandbytes NF4); none is visible")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PipelineError("train.qlora=true needs bitsandbytes: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch_dtype(cfg.model.dtype))
    model = AutoModelForCausalLM.from_pretrained(base_checkpoint(cfg), quantization_config=quant, local_files_only=True)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)


def lora_model(cfg: DictConfig):
    """The base wrapped with LoRA on the profile's target modules."""
    from peft import LoraConfig, get_peft_model

    t = cfg.train
    model = load_for_training(cfg)
    check_targets(model, cfg.model.lora_targets)
    model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                             target_modules=list(cfg.model.lora_targets), task_type="CAUSAL_LM"))
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


@dataclass
class Fitted:
    model: object                      # the unwrapped peft model, best adapter restored
    best: dict                         # validation CE/KL/loss at the best step, and the step
    steps_run: int
    last: dict[str, float]             # the last step's training CE/KL/loss
    tokens_per_s: float                # every rank's tokens over the loop's wall time
    trainable_parameters: int
    global_batch: int


def fit(cfg: DictConfig, accelerator, model, train_set: list[Example], val_set: list[Example], pad_id: int) -> Fitted:
    """The loop: CE + beta*KL, validate, keep the best adapter, stop when validation stops improving."""
    from dvclive import Live
    from transformers import get_scheduler

    t = cfg.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    # Not passed to accelerator.prepare: its wrapper steps a scheduler once per *process* per
    # optimizer step (unless split_batches), so under N ranks warmup and decay would end N times
    # early. Stepped by hand below, once per optimizer step, it has the same length on any count.
    schedule = get_scheduler("cosine" if t.schedule == "cosine" else "constant_with_warmup", optimizer,
                             num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    peft_model = accelerator.unwrap_model(model)  # disable_adapter() for the base forward lives here
    rank, world = accelerator.process_index, accelerator.num_processes
    live = Live(str(layout.TRAIN_LIVE_DIR), save_dvc_exp=False, dvcyaml=None, report=None) \
        if accelerator.is_main_process else None

    best = {"loss": float("inf"), "step": 0}
    best_state: dict[str, torch.Tensor] = {}
    stale, step, tokens = 0, 0, 0
    stream = batches(train_set, t.batch_size, cfg.seed, rank=rank, world=world)  # this rank's slice
    loop_start = time.perf_counter()
    model.train()
    for step in progress(range(1, t.max_steps + 1), desc="LoRA", total=t.max_steps):
        micro = [collate(next(stream), pad_id, accelerator.device) for _ in range(t.grad_accum)]
        tokens += sum(int(b["attention_mask"].sum()) for b in micro)
        # The loss of this step is its summed CE (+ beta KL) over every rank's scored tokens, so a
        # token weighs the same in any micro-batch on any rank. backward() divides by grad_accum
        # and DDP averages the ranks' gradients: the normalizer undoes both.
        step_tokens = accelerator.reduce(torch.tensor(sum(map(scored_tokens, micro)), device=accelerator.device),
                                         "sum")
        normalizer = float(step_tokens) / (t.grad_accum * world)
        for batch in micro:
            with accelerator.accumulate(model):
                out = objective(model, batch, t.kl_beta, with_kl=False, peft_model=peft_model, normalizer=normalizer)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                # Inside `accumulate`, the prepared optimizer's step() and zero_grad() do nothing
                # until the micro-batch that syncs gradients (the last of grad_accum), and DDP
                # all-reduces only on that one: one optimizer step per `step`.
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        schedule.step()
        # Every rank validates the same full set with the same (synced) weights, so all take the
        # same early-stopping decision; only the main one logs.
        val = validate(peft_model, val_set, t.batch_size, pad_id, t.kl_beta * t.domain_kl_weight) \
            if step % t.eval_every == 0 or step == t.max_steps else None
        if live is not None:
            for key, value in per_token(out, t.kl_beta).items():
                live.log_metric(f"train/{key}", round(value, 5))
            live.log_metric("train/lr", schedule.get_last_lr()[0])
            for key, value in (val or {}).items():
                live.log_metric(f"val/{key}", round(value, 5))
            live.next_step()
        if val is not None:
            if val["loss"] < best["loss"]:
                best, stale = {**val, "step": step}, 0
                best_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
            else:
                stale += 1
        if stale >= t.patience:
            log.info("early stop at step %d: no improvement for %d validations", step, stale)
            break
    if live is not None:
        live.end()
    seconds = time.perf_counter() - loop_start  # validation time included
    all_tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
    peft_model.load_state_dict(best_state, strict=False)
    return Fitted(peft_model, best, step, per_token(out, t.kl_beta), all_tokens / seconds,
                  sum(p.numel() for p in trainable), t.batch_size * t.grad_accum * world)


def per_token(out: dict[str, torch.Tensor], beta: float) -> dict[str, float]:
    """The last micro-batch's per-token CE, KL and loss, for the curves and metrics."""
    values = {k: float(out[k]) for k in ("ce", "kl") if k in out}
    return {**values, "loss": values["ce"] + beta * values.get("kl", 0.0)}


def save(cfg: DictConfig, fitted: Fitted, tokenizer, examples: int, processes: int, seconds: float) -> None:
    """The adapter (peft format) and the merged checkpoint, each written whole; the metrics."""
    with atomic_path(layout.LORA_DIR) as tmp:
        save_adapter(fitted.model, tmp / "adapter")
        merged = merge_into_base(cfg, tmp / "adapter")
        merged.save_pretrained(tmp / "merged", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "merged")
    best, last = fitted.best, fitted.last
    metrics = {"steps_run": fitted.steps_run, "best_step": best["step"],
               "stopped_early": fitted.steps_run < cfg.train.max_steps,
               "train_loss": round(last["loss"], 5), "train_ce": round(last["ce"], 5),
               "val_loss": round(best["loss"], 5), "val_ce": round(best["ce"], 5), "val_kl": round(best["kl"], 6),
               "examples": examples, "trainable_parameters": fitted.trainable_parameters,
               "processes": processes, "global_batch": fitted.global_batch,
               "tokens_per_s": round(fitted.tokens_per_s, 1), "seconds": round(seconds, 1)}
    if "kl" in last:
        metrics["train_kl"] = round(last["kl"], 6)
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    write_json(layout.TRAIN_METRICS, metrics)
    log.info("LoRA: best val loss %.4f (CE %.4f, KL %.5f) at step %d of %d, %.0f s", best["loss"], best["ce"],
             best["kl"], best["step"], fitted.steps_run, seconds)


def merge_into_base(cfg: DictConfig, adapter_dir):
    """The adapter merged into a fresh full-precision base (also after QLoRA, whose 4-bit base
    must not be what ships)."""
    from peft import PeftModel

    base = load_causal_lm(base_checkpoint(cfg), cfg.model.dtype, "cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.generation_config = base.generation_config
    return merged


main = stage_main(run)

if __name__ == "__main__":
    main()
