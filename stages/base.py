"""base: the model every later stage starts from.

- model.build=true (the embedded tiny profile): train a byte-level BPE tokenizer and pre-train a
  tiny Phi3ForCausalLM on the general corpus and the general task, on CPU, seeded; save it under
  models/base/ with save_pretrained (safetensors).
- model.gguf (smollm2): convert the Llama GGUF an installed package ships (or a path) into a Phi3
  checkpoint under models/base (stages/common/gguf_checkpoint.py), recording the GGUF's sha256.
- model.build=false (phi4_mini, phi4): validate the local checkpoint at model.path and record its
  fingerprint in models/base/base.json, so that a changed checkpoint re-runs what follows.
  Nothing is copied and nothing is downloaded.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stages.common import layout
from stages.common.atomic import atomic_path, write_json
from stages.common.chat import prompt_text
from stages.common.checkpoint import fingerprint, validate_checkpoint
from stages.common.errors import PipelineError
from stages.common.lm import text_windows, torch_perplexity
from stages.common.params import required
from stages.common.records import read_jsonl
from stages.common.runtime import get_logger, progress, seed_everything, stage_main

log = get_logger(__name__)


def run(cfg: DictConfig) -> None:
    if cfg.model.build:
        if cfg.model.path is not None:
            raise PipelineError(f"model.path={cfg.model.path}: a built base (model.build=true) is always written to "
                                f"{layout.BASE_DIR}; model.path names a local checkpoint (model.build=false)")
        metrics = build_tiny_base(cfg, layout.BASE_DIR)
    elif cfg.model.gguf:
        metrics = convert_gguf(cfg, str(cfg.model.gguf))
    else:
        metrics = record_local_checkpoint(Path(str(required(cfg, "model.path"))))
    write_json(layout.BASE_METRICS, metrics)


def record_local_checkpoint(path: Path) -> dict:
    validate_checkpoint(path)
    info = {"path": str(path.resolve()), "fingerprint": fingerprint(path)}
    with atomic_path(layout.BASE_DIR) as tmp:
        tmp.mkdir()
        write_json(tmp / "base.json", info)
    log.info("local checkpoint %s: %d files fingerprinted", path, len(info["fingerprint"]))
    return {"files": len(info["fingerprint"]), "built": False}


def convert_gguf(cfg: DictConfig, spec: str) -> dict:
    from stages.common.checkpoint import load_causal_lm, load_tokenizer
    from stages.common.gguf_checkpoint import convert, resolve_gguf

    start = time.perf_counter()
    info = convert(resolve_gguf(spec), layout.BASE_DIR)
    tokenizer = load_tokenizer(layout.BASE_DIR)
    heldout = [r["text"] for r in read_jsonl(cfg.data.eval.general_heldout, "text")][: cfg.evaluate.heldout_documents]
    ppl = torch_perplexity(load_causal_lm(layout.BASE_DIR), text_windows(tokenizer, heldout, cfg.evaluate.ppl_window))
    log.info("%s -> %s: %.1fM parameters, %d layers, held-out general perplexity %.1f",
             spec, layout.BASE_DIR, info["parameters"] / 1e6, info["layers"], ppl)
    return {"built": False, **info, "heldout_general_ppl": round(ppl, 3),
            "seconds": round(time.perf_counter() - start, 1)}


def pretraining_texts(cfg: DictConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """General corpus documents, and as chat turns (answer included) the general task and the
    safety split: refusals of red-team asks and answers to their benign look-alikes, so that the
    base refuses before LoRA (whose domain data holds no refusal) can make it forget."""
    corpus = [r["text"] for r in read_jsonl(cfg.data.general_corpus, "text")]
    task = read_jsonl(cfg.data.general_task_train, "instruction")
    if cfg.data.safety_train:
        task += read_jsonl(cfg.data.safety_train, "instruction")
    return corpus, [(r["prompt"], r["response"]) for r in task]


def build_tiny_base(cfg: DictConfig, out_dir: Path) -> dict:
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, get_cosine_schedule_with_warmup

    from stages.common.chat import end_of_turn
    from stages.common.tokenizer import train_bpe_tokenizer

    seed_everything(cfg.seed)
    start = time.perf_counter()
    pre = cfg.base.pretrain
    corpus, task = pretraining_texts(cfg)
    heldout = [r["text"] for r in read_jsonl(cfg.data.eval.general_heldout, "text")]

    tokenizer = train_bpe_tokenizer(corpus + [f"{p} {a}" for p, a in task], cfg.model.arch.vocab_size,
                                    cfg.base.tokenizer.min_frequency)
    end = end_of_turn(tokenizer)
    end_id = tokenizer.convert_tokens_to_ids(end)
    chats = [prompt_text(tokenizer, p) + a + end for p, a in task]

    # One token stream: every document and (general_task_epochs times) every task turn, shuffled,
    # each followed by end-of-text, cut into seq_len blocks.
    rng = random.Random(cfg.seed)
    docs = corpus + chats * pre.general_task_epochs
    rng.shuffle(docs)
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += [*ids, tokenizer.eos_token_id]
    blocks = torch.tensor(stream[: len(stream) // pre.seq_len * pre.seq_len]).view(-1, pre.seq_len)
    log.info("tokenizer: %d tokens; pre-training stream: %d tokens in %d blocks of %d",
             len(tokenizer), len(stream), len(blocks), pre.seq_len)

    config = Phi3Config(**OmegaConf.to_container(cfg.model.arch), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=True)  # as Phi-4-mini
    model = Phi3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=pre.lr, weight_decay=pre.weight_decay,
                                  betas=(0.9, 0.95))
    schedule = get_cosine_schedule_with_warmup(optimizer, pre.warmup_steps, pre.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses: list[float] = []
    for _step in progress(range(pre.steps), desc="pre-training", total=pre.steps):
        batch = blocks[torch.randint(len(blocks), (pre.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()

    heldout_ppl = torch_perplexity(model, text_windows(tokenizer, heldout, pre.seq_len))
    model.generation_config = GenerationConfig(eos_token_id=[end_id, tokenizer.eos_token_id],
                                               pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id, do_sample=False)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    seconds = time.perf_counter() - start
    log.info("tiny base: %.2fM parameters, final loss %.3f, held-out general perplexity %.1f (vocab %d), "
             "%.0f s", n_params / 1e6, losses[-1], heldout_ppl, len(tokenizer), seconds)
    tail = losses[-20:]
    return {"built": True, "parameters": n_params, "vocab_size": len(tokenizer),
            "pretrain_tokens": len(stream), "final_loss": round(sum(tail) / len(tail), 4),
            "heldout_general_ppl": round(heldout_ppl, 3),
            "seconds": round(seconds, 1)}


main = stage_main(run)

if __name__ == "__main__":
    main()
