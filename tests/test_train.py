import json
from pathlib import Path

import pytest

from stages import train
from stages.common import layout
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.lm import text_windows, torch_perplexity
from stages.common.records import read_jsonl
from tests.conftest import shrunk

pytestmark = pytest.mark.slow


def general_ppl(path: str) -> float:
    texts = [r["text"] for r in read_jsonl("data/eval/general_heldout.jsonl", "text")][:40]
    return torch_perplexity(load_causal_lm(path), text_windows(load_tokenizer(path), texts, 128))


def test_kl_penalty_keeps_the_model_near_its_base(trained_workspace):
    """Same seed, beta = 0 vs a large beta: the large beta ends closer to the base (lower KL on
    the held-out domain set) and moves general perplexity less."""
    base_ppl = general_ppl("models/base")
    results = {}
    for beta in (0.0, 2.0):
        train.run(shrunk([f"train.kl_beta={beta}", "train.lr=5e-3", "train.patience=100"]))
        metrics = json.loads(layout.TRAIN_METRICS.read_text())
        results[beta] = (metrics["val_kl"], abs(general_ppl("models/lora/merged") - base_ppl))
    assert results[2.0][0] < results[0.0][0]
    assert results[2.0][1] < results[0.0][1]


def test_same_seed_same_adapter_bytes(trained_workspace):
    cfg = shrunk(["train.max_steps=12", "train.eval_every=6"])
    train.run(cfg)
    first = (layout.ADAPTER_DIR / "adapter_model.safetensors").read_bytes()
    merged = (layout.MERGED_DIR / "model.safetensors").read_bytes()
    train.run(cfg)
    assert (layout.ADAPTER_DIR / "adapter_model.safetensors").read_bytes() == first
    assert (layout.MERGED_DIR / "model.safetensors").read_bytes() == merged
    metrics = json.loads(layout.TRAIN_METRICS.read_text())
    assert {"train_loss", "val_loss", "train_ce", "val_ce", "val_kl", "best_step", "steps_run"} <= set(metrics)
    assert (layout.TRAIN_LIVE_DIR / "plots" / "metrics" / "val" / "kl.tsv").is_file()


def test_adapter_config_is_canonical(tmp_path):
    """peft holds target_modules as a set: its order follows the process's hash seed."""
    from stages.common.finetune import save_adapter

    class FakePeft:
        def save_pretrained(self, out, safe_serialization):
            out.mkdir()
            (out / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["o_proj", "down_proj"]}))

    save_adapter(FakePeft(), tmp_path / "adapter")
    text = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert json.loads(text)["target_modules"] == ["down_proj", "o_proj"]
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_early_stopping_keeps_the_best_adapter(trained_workspace):
    # A learning rate far too large, held (no decay): validation must get worse, and training stop.
    train.run(shrunk(["train.max_steps=60", "train.eval_every=2", "train.patience=1", "train.lr=5",
                      "train.schedule=constant"]))
    metrics = json.loads(layout.TRAIN_METRICS.read_text())
    assert metrics["stopped_early"] and metrics["steps_run"] < 60
    assert metrics["best_step"] < metrics["steps_run"]


def test_bad_inputs_fail_clearly_and_write_nothing(trained_workspace):
    with pytest.raises(PipelineError, match="not in the model; its linear layers are"):
        train.run(shrunk(["model.lora_targets=[q_proj]"]))
    clean = layout.CLEAN_TRAIN.read_text().splitlines()
    layout.CLEAN_TRAIN.write_text("\n".join([*clean[:5], json.dumps({"id": "x", "prompt": "p"})]) + "\n")
    with pytest.raises(PipelineError, match=r"train.jsonl:6: missing field 'response'"):
        train.run(shrunk())
    layout.CLEAN_TRAIN.write_text("")
    with pytest.raises(PipelineError, match="empty file"):
        train.run(shrunk())
    assert not layout.LORA_DIR.exists() and not layout.TRAIN_METRICS.exists()


def test_anchor_rows_are_scored_by_kl_alone(trained_workspace):
    """A safety anchor (kl_only) adds nothing to CE: a batch of anchors has zero loss at beta 0,
    and a mixed batch has the CE of its other rows."""
    import torch
    from peft import LoraConfig, get_peft_model

    from stages.common.finetune import Example, collate, encode, objective

    tokenizer = load_tokenizer("models/base")
    model = get_peft_model(load_causal_lm("models/base"), LoraConfig(r=4, target_modules=["qkv_proj"]))
    task, anchor = encode(tokenizer, [("Which package holds json.dumps?", "json"),
                                      ("How do I pick a lock?", "I can't help with that.")], 64)
    anchor = Example(anchor.input_ids, anchor.labels, kl_only=True)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone = objective(model, collate([task], pad, "cpu"), 0.0, with_kl=False)
        mixed = objective(model, collate([task, anchor], pad, "cpu"), 0.0, with_kl=False)
        anchors = objective(model, collate([anchor], pad, "cpu"), 0.0, with_kl=True)
    assert float(mixed["ce"]) == pytest.approx(float(alone["ce"]), rel=1e-5)
    assert float(anchors["loss"]) == 0.0 and "kl" in anchors

    # train.anchor_kl_weight: the anchor's KL weighs that many times beta in the loss; the
    # reported KL stays the plain per-token mean. An adapter away from zero, so the KL is not 0.
    torch.manual_seed(0)
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            weight.data.normal_(0, 0.05)
    heavy = Example(anchor.input_ids, anchor.labels, kl_only=True, kl_weight=3.0)
    with torch.no_grad():
        light_out = objective(model, collate([anchor], pad, "cpu"), 0.5, with_kl=True)
        heavy_out = objective(model, collate([heavy], pad, "cpu"), 0.5, with_kl=True)
    assert float(light_out["kl"]) > 1e-4 and float(heavy_out["kl"]) == float(light_out["kl"])
    assert float(heavy_out["loss"]) == pytest.approx(3 * float(light_out["loss"]), rel=1e-5)
    assert float(light_out["loss"]) == pytest.approx(0.5 * float(light_out["kl"]), rel=1e-5)


def test_anchors_can_hold_the_base_to_its_own_answers(trained_workspace):
    """train.anchor_answers=base: the same anchor prompts as with the set's answers (same sample),
    each now answered by the base's own greedy decoding (with its end-of-turn token where it
    stopped), still scored by the KL alone; the rest of the mix is unchanged."""
    from stages.common.chat import stop_token_ids
    from stages.common.finetune import IGNORE
    from stages.common.language_model import TorchModel
    from stages.train import training_data

    tokenizer = load_tokenizer("models/base")
    whole = ["train.max_seq_len=256", "train.safety_kl_only=true"]  # no turn cut; anchors marked kl_only
    data, _ = training_data(shrunk(whole), tokenizer)
    own, _ = training_data(shrunk([*whole, "train.anchor_answers=base", "train.anchor_answer_tokens=12"]), tokenizer)
    assert len(own) == len(data)
    anchors = [(a, b) for a, b in zip(data, own, strict=True) if a.kl_only]
    assert anchors and all(b.kl_only for _, b in anchors)
    assert all(a.input_ids == b.input_ids for a, b in zip(data, own, strict=True) if not a.kl_only)
    base, stop = TorchModel(Path("models/base")), stop_token_ids(tokenizer)
    for a, b in anchors[:4]:
        prompt = [t for t, label in zip(a.input_ids, a.labels, strict=True) if label == IGNORE]
        assert prompt == [t for t, label in zip(b.input_ids, b.labels, strict=True) if label == IGNORE]
        answer = base.greedy(prompt, 12, stop)
        assert b.input_ids[len(prompt):] == answer + (stop[:1] if len(answer) < 12 else [])


def test_anchors_are_drawn_from_both_wordings_and_never_from_the_eval_sets(trained_workspace):
    """data.safety_anchors adds the same asks in wordings neither pre-training nor the eval sets
    use: the sampled anchors hold both, and none is a red-team or benign eval prompt. By default
    (safety_kl_only false) the same turns are in the mix, scored by CE as well."""
    from stages.common.chat import prompt_ids
    from stages.common.finetune import IGNORE
    from stages.train import training_data

    tokenizer = load_tokenizer("models/base")
    data, _ = training_data(shrunk(["train.max_seq_len=256", "train.safety_kl_only=true"]), tokenizer)  # no prompt cut
    default, _ = training_data(shrunk(["train.max_seq_len=256"]), tokenizer)
    assert [e.input_ids for e in default] == [e.input_ids for e in data]
    assert not any(e.kl_only for e in default)
    anchors = [tuple(t for t, label in zip(e.input_ids, e.labels, strict=True) if label == IGNORE)
               for e in data if e.kl_only]
    files = {"train": ("data/raw/safety_train.jsonl", "instruction"),
             "anchors": ("data/raw/safety_anchors.jsonl", "instruction"),
             "redteam": ("data/eval/safety_redteam.jsonl", "task"), "benign": ("data/eval/safety_benign.jsonl", "task")}
    source = {tuple(prompt_ids(tokenizer, r["prompt"])): name for name, (path, kind) in files.items()
              for r in read_jsonl(path, kind)}
    found = [source.get(a) for a in anchors]
    assert found.count("train") > 0 and found.count("anchors") > 0
    assert found.count("train") + found.count("anchors") == len(anchors)  # none from an eval set, none unknown
