import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stages import base
from stages.common import layout
from stages.common.chat import prompt_ids, response_ids, stop_token_ids
from stages.common.checkpoint import validate_checkpoint
from stages.common.errors import PipelineError
from stages.common.lm import text_windows, torch_perplexity
from stages.common.params import REPO_ROOT, compose, write_params
from stages.common.records import read_jsonl
from stages.common.tokenizer import train_bpe_tokenizer
from tests.conftest import shrunk

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Return the module's name, or None.",
         "Ünïcödé and emoji 🙂 survive byte-level BPE."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=400, min_frequency=1)


def test_tokenizer_round_trip_and_special_tokens(tokenizer, tmp_path):
    for text in [*TEXTS[:3], "never seen: Zürich ☃ 12345"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert again("<|user|>hi<|end|>")["input_ids"] == tokenizer("<|user|>hi<|end|>")["input_ids"]
    assert again.convert_ids_to_tokens(again("<|user|>")["input_ids"]) == ["<|user|>"]


def test_chat_template_is_phi4_mini_style(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|user|>Hi<|end|><|assistant|>"
    ids = prompt_ids(tokenizer, "Hi") + response_ids(tokenizer, "Yo")
    assert tokenizer.decode(ids) == "<|user|>Hi<|end|><|assistant|>Yo<|end|>"
    assert tokenizer.convert_tokens_to_ids("<|end|>") in stop_token_ids(tokenizer)


def test_missing_checkpoint_names_what_is_missing(tmp_path):
    with pytest.raises(PipelineError, match="no such directory"):
        validate_checkpoint(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PipelineError) as err:
        validate_checkpoint(tmp_path)
    assert "tokenizer_config.json" in str(err.value) and "safetensors" in str(err.value)


def test_base_stage_without_model_path_fails_clearly(workspace):
    with pytest.raises(PipelineError, match="model.path: required"):  # make params writes nothing
        write_params(["model=phi4_mini"])
    # as `dvc exp run -S model=phi4_mini` composes it (DVC's own Hydra call, no check): `???` left
    Path("params.yaml").write_text(OmegaConf.to_yaml(compose(["model=phi4_mini"])))
    out = subprocess.run([sys.executable, "-m", "stages.base"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert out.returncode == 2, out.stderr
    assert "model.path: required" in out.stderr + out.stdout
    write_params(["model=phi4_mini", f"model.path={workspace / 'nowhere'}"])
    out = subprocess.run([sys.executable, "-m", "stages.base"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "no such directory" in out.stderr + out.stdout
    assert not layout.BASE_DIR.exists()


@pytest.mark.slow
def test_tiny_base_builds_loads_offline_and_generates(workspace):
    cfg = shrunk()
    base.run(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("models/base", local_files_only=True)
    tok = AutoTokenizer.from_pretrained("models/base", local_files_only=True)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    ids = torch.tensor([prompt_ids(tok, "Which top-level package does json.dumps belong to?")])
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    # The saved checkpoint is the trained model: reloaded, it scores held-out text as the stage
    # measured before saving, far better than a uniform guess over the vocabulary.
    metrics = json.loads(layout.BASE_METRICS.read_text())
    texts = [r["text"] for r in read_jsonl(cfg.data.eval.general_heldout, "text")]
    ppl = torch_perplexity(model, text_windows(tok, texts, cfg.base.pretrain.seq_len))
    assert ppl == pytest.approx(metrics["heldout_general_ppl"], rel=1e-4)
    assert ppl < 0.5 * cfg.model.arch.vocab_size

    # A real profile pointed at that folder validates and fingerprints it, copying nothing.
    import shutil

    shutil.copytree("models/base", "ckpt")
    base.run(compose(["model=phi4_mini", f"model.path={workspace / 'ckpt'}"]))
    info = json.loads((layout.BASE_DIR / "base.json").read_text())
    assert "model.safetensors" in info["fingerprint"] and sorted(p.name for p in layout.BASE_DIR.iterdir()) == [
        "base.json"]
