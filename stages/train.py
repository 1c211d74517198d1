"""train: LoRA on the base with a KL leash, the best adapter kept, and the merged model saved.

    loss = CE(response tokens) + kl_beta * KL(p_theta || p_base)

p_base is the same model with the adapter disabled (no second copy). Against forgetting, a share
of general-task examples (train.general_mix) is mixed in, and a share of plain general-text
windows (train.replay_mix), scored on every token, so that the KL leash also holds the model's
distribution on ordinary text, not only on answers. AdamW with weight decay on the LoRA
parameters, warmup then cosine or constant, gradient accumulation and clipping; validation on the
held-out domain set every eval_every steps, early stopping after `patience` validations without
improvement. Runs as is on CPU (tiny) or under `accelerate launch` on several GPUs.

    python -m stages.train train.kl_beta=0.1 train.lora.r=4
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.checkpoint import base_checkpoint, load_causal_lm, load_tokenizer, torch_dtype
from stages.common.errors import PipelineError
from stages.common.lora import (
    batches,
    check_targets,
    collate,
    encode,
    encode_text,
    mix_general,
    objective,
    replay_sample,
    save_adapter,
    validate,
)
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, progress, seed_everything, stage_main

log = get_logger(__name__)


def pairs(rows: list[dict], answer_field: str) -> list[tuple[str, str]]:
    for row in rows:
        if not row[answer_field].strip():
            raise PipelineError(f"record {row['id']!r}: empty {answer_field}; nothing to learn from")
    return [(row["prompt"], row[answer_field]) for row in rows]


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


def run(cfg: DictConfig) -> None:
    from accelerate import Accelerator
    from dvclive import Live
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    t = cfg.train
    if t.schedule not in ("cosine", "constant"):
        raise PipelineError(f"train.schedule={t.schedule!r}: expected cosine or constant")
    seed_everything(cfg.seed)
    start = time.perf_counter()

    # Data: the clean domain set, a general mix, and the held-out domain set for validation.
    tokenizer = load_tokenizer(base_checkpoint(cfg))
    domain = pairs(read_jsonl(layout.CLEAN_TRAIN, "instruction"), "response")
    general = pairs(read_jsonl(cfg.data.general_task_train, "instruction"), "response")
    train_set = encode(tokenizer, mix_general(domain, general, t.general_mix, cfg.seed), t.max_seq_len)
    if t.replay_mix > 0:
        corpus = encode_text(tokenizer, [r["text"] for r in read_jsonl(cfg.data.general_corpus, "text")], t.max_seq_len)
        train_set += replay_sample(corpus, len(train_set), t.replay_mix, cfg.seed)
    val_set = encode(tokenizer, pairs(read_jsonl(cfg.data.eval.domain_val, "task"), "answer"), t.max_seq_len)
    if len(train_set) < t.batch_size:
        raise PipelineError(f"{len(train_set)} training examples, fewer than one batch ({t.batch_size})")

    # Model: the base wrapped with LoRA on the profile's target modules.
    model = load_for_training(cfg)
    check_targets(model, cfg.model.lora_targets)
    model = get_peft_model(model, LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                             target_modules=list(cfg.model.lora_targets), task_type="CAUSAL_LM"))
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    schedule = get_scheduler("cosine" if t.schedule == "cosine" else "constant_with_warmup", optimizer,
                             num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps)
    accelerator = Accelerator(gradient_accumulation_steps=t.grad_accum, cpu=cfg.model.device == "cpu")
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    peft_model = accelerator.unwrap_model(model)
    pad_id = tokenizer.pad_token_id

    # Loop: CE + beta*KL, validate, keep the best adapter, stop when validation stops improving.
    live = Live(str(layout.TRAIN_LIVE_DIR), save_dvc_exp=False, dvcyaml=None, report=None)
    best = {"loss": float("inf"), "step": 0}
    best_state: dict[str, torch.Tensor] = {}
    stale, step, tokens = 0, 0, 0
    stream = batches(train_set, t.batch_size, cfg.seed)
    loop_start = time.perf_counter()
    model.train()
    for step in progress(range(1, t.max_steps + 1), desc="LoRA", total=t.max_steps):
        for _ in range(t.grad_accum):
            with accelerator.accumulate(model):
                batch = collate(next(stream), pad_id, accelerator.device)
                tokens += int(batch["attention_mask"].sum())
                out = objective(model, batch, t.kl_beta, with_kl=False, peft_model=peft_model)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
        for key, value in out.items():
            live.log_metric(f"train/{key}", round(float(value.detach()), 5))
        live.log_metric("train/lr", schedule.get_last_lr()[0])
        if step % t.eval_every == 0 or step == t.max_steps:
            val = validate(peft_model, val_set, t.batch_size, pad_id, t.kl_beta)
            for key, value in val.items():
                live.log_metric(f"val/{key}", round(value, 5))
            if val["loss"] < best["loss"]:
                best, stale = {**val, "step": step}, 0
                best_state = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
            else:
                stale += 1
        live.next_step()
        if stale >= t.patience:
            log.info("early stop at step %d: no improvement for %d validations", step, stale)
            break
    live.end()
    tokens_per_s = tokens / (time.perf_counter() - loop_start)  # validation time included
    peft_model.load_state_dict(best_state, strict=False)
    seconds = time.perf_counter() - start

    # Outputs: the adapter (peft format) and the merged checkpoint, each written whole.
    with atomic_path(layout.LORA_DIR) as tmp:
        save_adapter(peft_model, tmp / "adapter")
        merged = merge_into_base(cfg, tmp / "adapter")
        merged.save_pretrained(tmp / "merged", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "merged")
    metrics = {"steps_run": step, "best_step": best["step"], "stopped_early": step < t.max_steps,
               "train_loss": round(out["loss"].item(), 5), "train_ce": round(out["ce"].item(), 5),
               "val_loss": round(best["loss"], 5), "val_ce": round(best["ce"], 5), "val_kl": round(best["kl"], 6),
               "examples": len(train_set), "trainable_parameters": sum(p.numel() for p in trainable),
               "tokens_per_s": round(tokens_per_s * accelerator.num_processes, 1),
               "seconds": round(seconds, 1)}
    if "kl" in out:
        metrics["train_kl"] = round(out["kl"].item(), 6)
    if torch.cuda.is_available():
        metrics["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    write_json(layout.TRAIN_METRICS, metrics)
    log.info("LoRA: best val loss %.4f (CE %.4f, KL %.5f) at step %d of %d, %.0f s", best["loss"], best["ce"],
             best["kl"], best["step"], step, seconds)


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
