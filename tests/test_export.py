import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from stages import export, quant_int4, quant_int8, train
from stages.common import layout
from stages.common.chat import prompt_ids, stop_token_ids
from stages.common.checkpoint import load_causal_lm, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.genai import GenaiModel
from stages.common.language_model import TorchModel
from stages.common.lm import next_token_fidelity, torch_logits
from stages.common.onnx_models import (
    ADAPTER_FILE,
    adapter_weights_from_peft,
    copy_support_files,
    folder_megabytes,
    load,
    read_adapter_file,
    save_canonical,
    write_adapter_file,
)
from stages.common.records import read_jsonl
from stages.common.tied_embedding import gather_columns, gather_rows, untie_embedding
from stages.common.weight_only import WeightOnlySpec, quantize_weights
from tests.conftest import shrunk
from tests.onnx_helpers import matmul_nbits_attributes

pytestmark = pytest.mark.slow


def prompts(n: int = 6) -> list[str]:
    sets = ("data/eval/domain_test.jsonl", "data/eval/general_test.jsonl")
    return [r["prompt"] for path in sets for r in read_jsonl(path, "task")[:n]]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_fp32_matches_torch_logits_and_greedy_output(ladder_workspace):
    torch_model = load_causal_lm(layout.MERGED_DIR)
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    onnx = GenaiModel(layout.ONNX_FP32)
    stop = stop_token_ids(tokenizer)
    for prompt in prompts():
        ids = prompt_ids(tokenizer, prompt)
        np.testing.assert_allclose(onnx.logits(ids), torch_logits(torch_model, ids), atol=1e-4, rtol=0)
        assert onnx.greedy(ids, 12, stop) == TorchModel(layout.MERGED_DIR).greedy(ids, 12, stop)
    # chunked appends give the same logits as one append (long texts go in chunks)
    long_ids = [t for p in prompts() for t in prompt_ids(tokenizer, p)][:200]
    np.testing.assert_allclose(onnx.logits(long_ids, chunk=64), onnx.logits(long_ids), atol=1e-4, rtol=0)


def test_every_rung_loads_generates_and_stays_close_to_fp32(ladder_workspace):
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    ids = prompt_ids(tokenizer, prompts(1)[0])
    for folder in (layout.ONNX_FP32, layout.ONNX_INT8, layout.ONNX_INT4, layout.ONNX_ADAPTER_FP32,
                   layout.ONNX_ADAPTER_INT4):
        for name in ("genai_config.json", "tokenizer.json", "chat_template.jinja", "model.onnx", "model.onnx.data"):
            assert (folder / name).is_file(), f"{folder} lacks {name}"
        model = GenaiModel(folder)
        adapter = None
        if (folder / ADAPTER_FILE).exists():
            model.load_adapter(folder / ADAPTER_FILE, "lora")
            adapter = "lora"
        assert 1 <= len(model.greedy(ids, 5, [-1], adapter=adapter)) <= 5  # genai also stops at the model's EOS
    for folder in (layout.ONNX_INT8, layout.ONNX_INT4):
        close_to_fp32(folder)
    close_to_fp32(layout.ONNX_ADAPTER_FP32, adapter=True, max_kl=1e-4, min_top1=1.0)
    close_to_fp32(layout.ONNX_ADAPTER_INT4, adapter=True)


def test_adapter_tensor_names_match_graph_inputs(ladder_workspace):
    inputs = {i.name for i in load(layout.ONNX_ADAPTER_FP32).graph.input}
    names = set(read_adapter_file(layout.ONNX_ADAPTER_FP32 / ADAPTER_FILE))
    assert names and names <= inputs
    int4 = load(layout.ONNX_ADAPTER_INT4)
    assert names <= {i.name for i in int4.graph.input}
    fed_by_lora = [n for n in int4.graph.node if set(n.input) & names]
    assert fed_by_lora and all(n.op_type == "MatMul" for n in fed_by_lora)  # LoRA kept out of INT4


def test_hot_swap_two_adapters_on_one_base(ladder_workspace):
    """One loaded base, two adapters switched at run time, each matching its peft model."""
    from peft import PeftModel

    first = Path("adapter_one")
    layout.ADAPTER_DIR.rename(first)
    train.run(shrunk(["seed=7", "train.kl_beta=0", "train.lr=1e-2", "train.max_steps=10"]))
    second = Path("adapter_two")
    layout.ADAPTER_DIR.rename(second)
    write_adapter_file(adapter_weights_from_peft(layout.BASE_DIR, second, "cpu"), Path("two.onnx_adapter"))

    model = GenaiModel(layout.ONNX_ADAPTER_FP32)
    model.load_adapter(layout.ONNX_ADAPTER_FP32 / ADAPTER_FILE, "one")
    model.load_adapter(Path("two.onnx_adapter"), "two")
    tokenizer = load_tokenizer(layout.BASE_DIR)
    ids = prompt_ids(tokenizer, prompts(1)[0])
    expected = {name: torch_logits(PeftModel.from_pretrained(load_causal_lm(layout.BASE_DIR), str(path)).eval(), ids)
                for name, path in (("one", first), ("two", second))}
    for name in ("one", "two", "one"):
        np.testing.assert_allclose(model.logits(ids, adapter=name), expected[name], atol=1e-4, rtol=0)
    assert np.abs(expected["one"] - expected["two"]).max() > 1e-2  # really two different adapters
    np.testing.assert_allclose(model.logits(ids), torch_logits(load_causal_lm(layout.BASE_DIR), ids), atol=1e-4, rtol=0)


def test_float_rungs_look_up_the_tied_table_without_transposing_it(ladder_workspace):
    """The builder's Gather(Transpose(table)) transposes a Phi-4-mini-sized table at every step
    (onnxruntime folds constants only below 1 GiB); the served graph gathers the token's columns
    instead. Same logits, bit for bit, as the builder's form; and the quantizers' round trip
    through gather_rows gives back the served form."""
    for folder in (layout.ONNX_FP32, layout.ONNX_ADAPTER_FP32):
        graph = load(folder).graph
        inits = {t.name for t in graph.initializer}
        assert not [n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits]
        assert [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                and any(a.name == "axis" and a.i == 1 for a in n.attribute)]
    served = load(layout.ONNX_FP32)
    builders = load(layout.ONNX_FP32)
    assert gather_rows(builders) and not gather_rows(builders)
    inits = {t.name for t in builders.graph.initializer}
    assert [n for n in builders.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    copy_support_files(layout.ONNX_FP32, Path("rows"))
    save_canonical(builders, Path("rows"))
    ids = prompt_ids(load_tokenizer(layout.MERGED_DIR), prompts(1)[0])
    np.testing.assert_array_equal(GenaiModel(Path("rows")).logits(ids), GenaiModel(layout.ONNX_FP32).logits(ids))
    assert gather_columns(builders) and not gather_columns(builders)
    assert [(n.op_type, list(n.input)) for n in builders.graph.node] == \
        [(n.op_type, list(n.input)) for n in served.graph.node]


def test_bytes_a_decode_step_reads(ladder_workspace):
    """The real-size benchmark's bytes per token: every weight, but an embedding table that only
    the lookup reads (one row a step). A tied table is read whole by lm_head, so it counts."""
    from benchmarks.real_size import onnx_decode_bytes

    def weight_bytes(model) -> int:
        return sum(int({e.key: e.value for e in t.external_data}.get("length", len(t.raw_data)))
                   for t in model.graph.initializer)

    for folder in (layout.ONNX_FP32, layout.ONNX_INT4):
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        assert onnx_decode_bytes(folder) == weight_bytes(graph)
    separate = load(layout.ONNX_FP32)
    untie_embedding(separate)
    copy_support_files(layout.ONNX_FP32, Path("untied"))
    save_canonical(separate, Path("untied"))
    graph = onnx.load("untied/model.onnx", load_external_data=False)
    lookup = next(n for n in graph.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    table = next(t for t in graph.graph.initializer if t.name == lookup.input[0])
    table_bytes = int({e.key: e.value for e in table.external_data}["length"])
    assert onnx_decode_bytes(Path("untied")) == weight_bytes(graph) - table_bytes
    assert table_bytes == 4 * int(np.prod(table.dims)) > 0


def test_int4_graph_carries_the_params(ladder_workspace):
    quant_int4.run(shrunk(["quant_int4.block_size=16", "quant_int4.accuracy_level=4", "quant_int4.symmetric=false",
                           "quant_int4.keep_8bit=[]"]))
    for folder in (layout.ONNX_INT4, layout.ONNX_ADAPTER_INT4):
        attrs = matmul_nbits_attributes(load(folder))
        assert attrs and all(a["bits"] == 4 and a["block_size"] == 16 and a["accuracy_level"] == 4 for a in attrs)
        zero_points = [n for n in load(folder).graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3]
        assert zero_points  # asymmetric: zero points present


def test_tied_embedding_reads_the_quantized_lm_head(ladder_workspace):
    """One quantized table read by both lm_head (MatMulNBits) and the embedding
    (GatherBlockQuantized). INT4: the same logits as a separately quantized embedding, in fewer
    bytes. INT8 (the builder keeps a float copy otherwise): smaller, and as close to FP32. (The
    default INT4 keeps lm_head, and so the shared table, at 8 bits; here every MatMul is 4-bit.)"""
    cfg = shrunk(["quant_int4.keep_8bit=[]"])
    quant_int4.run(cfg)
    config = json.loads((layout.MERGED_DIR / "config.json").read_text())
    table = [config["vocab_size"], config["hidden_size"]]
    for folder, bits in ((layout.ONNX_INT4, 4), (layout.ONNX_ADAPTER_INT4, 4), (layout.ONNX_INT8, 8)):
        graph = load(folder).graph
        lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
        reshape = next(n for n in graph.node if n.output[0] == lookup.input[0])
        lm_head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
        assert reshape.input[0] == lm_head.input[1] and lookup.input[2] == lm_head.input[2]
        assert next(a.i for a in lookup.attribute if a.name == "bits") == bits
        assert not [n for n in graph.node if n.op_type in ("Gather", "Transpose") and "embed_tokens" in n.name]
        assert not [t for t in graph.initializer if list(t.dims) in (table, table[::-1])]  # no float table

    separate = load(layout.ONNX_FP32)
    untie_embedding(separate)  # the embedding then gets its own quantized copy
    spec = WeightOnlySpec.from_params(cfg.quant_int4, "quant_int4")
    separate = quantize_weights(separate, dataclasses.replace(spec, embedding=True))
    copy_support_files(layout.ONNX_FP32, Path("separate"))
    save_canonical(separate, Path("separate"))
    assert folder_megabytes(layout.ONNX_INT4, weights_only=True) < 0.9 * folder_megabytes(Path("separate"), True)
    ids = prompt_ids(load_tokenizer(layout.MERGED_DIR), prompts(1)[0])
    np.testing.assert_array_equal(GenaiModel(layout.ONNX_INT4).logits(ids), GenaiModel(Path("separate")).logits(ids))

    shared_int8 = GenaiModel(layout.ONNX_INT8).logits(ids)
    shared_mb = folder_megabytes(layout.ONNX_INT8, weights_only=True)
    quant_int8.run(shrunk(["quant_int8.quantize_embedding=false"]))
    fp32 = GenaiModel(layout.ONNX_FP32).logits(ids)
    float_table = np.abs(GenaiModel(layout.ONNX_INT8).logits(ids) - fp32).max()
    # The shared table adds the embedding's 8-bit rounding to lm_head's: within twice the float
    # table's error, and the same next token wherever FP32's lead over its runner-up is larger
    # than that error could close (a near-tie may flip either way; most positions are not one).
    error = np.abs(shared_int8 - fp32).max()
    assert error <= 2 * float_table
    top2 = np.sort(fp32, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * error
    assert clear.mean() > 0.8 and (shared_int8.argmax(-1) == fp32.argmax(-1))[clear].all()
    assert shared_mb < 0.8 * folder_megabytes(layout.ONNX_INT8, weights_only=True)


def test_reruns_are_byte_identical(ladder_workspace):
    before = {f: digest(f) for f in (layout.ONNX_FP32, layout.ONNX_ADAPTER_FP32, layout.ONNX_INT8, layout.ONNX_INT4,
                                     layout.ONNX_ADAPTER_INT4)}
    cfg = shrunk()
    for stage in (export, quant_int8, quant_int4):
        stage.run(cfg)
    assert {f: digest(f) for f in before} == before


def test_graphs_carry_the_builder_stamp_not_our_commit(ladder_workspace):
    """The builder stamps `git rev-parse HEAD` of the folder around its site-packages: with .venv
    inside this repo, our commit, so each commit would change every graph's bytes."""
    import onnxruntime_genai as og

    for folder in (layout.ONNX_FP32, layout.ONNX_ADAPTER_FP32, layout.ONNX_INT8):
        assert load(folder).producer_version == f"{og.__version__}+{og.__commit__[:7]}"


def test_dynamic_int8_is_selectable_and_byte_stable(ladder_workspace):
    cfg = shrunk(["quant_int8.method=dynamic"])
    quant_int8.run(cfg)
    first = digest(layout.ONNX_INT8)
    quant_int8.run(cfg)
    assert digest(layout.ONNX_INT8) == first
    ops = {n.op_type for n in load(layout.ONNX_INT8).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    close_to_fp32(layout.ONNX_INT8)


def test_bad_inputs_fail_before_writing(ladder_workspace):
    import shutil

    shutil.rmtree(layout.ONNX_DIR)
    (layout.MERGED_DIR / "tokenizer.json").unlink()
    with pytest.raises(PipelineError, match="missing tokenizer.json"):
        export.run(shrunk())
    assert not layout.ONNX_DIR.exists()


def close_to_fp32(folder: Path, adapter: bool = False, max_kl: float = 0.05, min_top1: float = 0.75) -> None:
    """The rung's next-token distribution against the FP32 rung's on real prompts: a garbage
    graph that still generates tokens fails here (its KL is far above the budget). Top-1
    agreement is loose: the shrunk model's 60-step distributions are flat, full of near-ties
    that any quantization flips (measured 0.84-0.86 at KL 0.005)."""
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    ids = [t for p in prompts(3) for t in prompt_ids(tokenizer, p)]
    model = GenaiModel(folder, adapter_files=[folder / ADAPTER_FILE] if adapter else ())
    model.active = "lora" if adapter else None
    kl, same = next_token_fidelity(GenaiModel(layout.ONNX_FP32).logits(ids), model.logits(ids))
    assert kl.mean() < max_kl and same.mean() >= min_top1, (folder, kl.mean(), same.mean())


@pytest.mark.parametrize("algorithm", ["k_quant", "hqq", "gptq", "awq"])
def test_every_int4_algorithm_stays_close_to_fp32(ladder_workspace, algorithm):
    """Both INT4 rungs, the hot-swap one through its adapter file (for awq: the adapter
    transformed with the base's AWQ scales, which are saved beside each rung)."""
    quant_int4.run(shrunk([f"quant_int4.algorithm={algorithm}", "quant_int4.calibration_samples=4",
                           "quant_int4.keep_8bit=[]"]))
    attrs = matmul_nbits_attributes(load(layout.ONNX_INT4))
    assert attrs and all(a["bits"] == 4 and a["accuracy_level"] == 4 for a in attrs)
    close_to_fp32(layout.ONNX_INT4)
    close_to_fp32(layout.ONNX_ADAPTER_INT4, adapter=True)
    for folder in (layout.ONNX_INT4, layout.ONNX_ADAPTER_INT4):
        assert (folder / quant_int4.AWQ_SCALES).is_file() == (algorithm == "awq")


def nbits_by_name(folder: Path) -> dict[str, int]:
    """bits of each quantized node, by its name without the quantizer's _Q4/_Q8 suffix."""
    import re

    from onnx import helper

    return {re.sub(r"_Q\d+$", "", n.name): next(helper.get_attribute_value(a) for a in n.attribute if a.name == "bits")
            for n in load(folder).graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}


@pytest.mark.parametrize(("keep", "eight"), [("[lm_head]", r"^/lm_head/|embed_tokens"), ("[down_proj]", "down_proj")])
def test_keep_8bit_changes_only_the_matmuls_it_names(ladder_workspace, keep, eight):
    """INT4 with chosen MatMuls at 8 bits (the fix for an INT4 lm_head that makes Phi-4-mini
    repeat itself): exactly the named nodes change, the tied table follows an 8-bit lm_head, and
    the rung stays close to FP32."""
    import re

    quant_int4.run(shrunk(["quant_int4.keep_8bit=[]"]))
    default = nbits_by_name(layout.ONNX_INT4)
    quant_int4.run(shrunk([f"quant_int4.keep_8bit={keep}"]))
    mixed = nbits_by_name(layout.ONNX_INT4)
    assert mixed.keys() == default.keys() and set(default.values()) == {4}
    changed = {name for name in mixed if mixed[name] != default[name]}
    assert changed and all(mixed[n] == 8 for n in changed)
    assert changed == {name for name in mixed if re.search(eight, name)}
    adapter = nbits_by_name(layout.ONNX_ADAPTER_INT4)  # the hot-swap base follows the same choice
    assert {n for n, b in adapter.items() if b == 8} == {n for n in adapter if re.search(eight, n)}
    metrics = json.loads(layout.QUANT_INT4_METRICS.read_text())
    assert metrics["kept_8bit"] == [keep.strip("[]")]
    close_to_fp32(layout.ONNX_INT4)


def test_keep_8bit_pattern_that_matches_nothing_is_an_error(ladder_workspace):
    shutil.rmtree(layout.ONNX_INT4)
    with pytest.raises(PipelineError, match="keep_8bit: 'lmhead' matches no MatMul"):
        quant_int4.run(shrunk(["quant_int4.keep_8bit=[lmhead]"]))
    assert not layout.ONNX_INT4.exists()


def test_serving_knobs_reach_every_rungs_genai_config(ladder_workspace):
    """serving.* as set, in the genai_config.json of every ONNX rung the stages write (the INT4
    rungs inherit the float rungs' files), and a rung loads and scores the same with them."""
    tokenizer = load_tokenizer(layout.MERGED_DIR)
    ids = [t for p in prompts(2) for t in prompt_ids(tokenizer, p)]
    before = GenaiModel(layout.ONNX_FP32).logits(ids)
    cfg = shrunk(["serving.intra_op_num_threads=1", "serving.inter_op_num_threads=1", "serving.max_length=300",
                  "serving.past_present_share_buffer=false"])
    for stage in (export, quant_int8, quant_int4):
        stage.run(cfg)
    for folder in (layout.ONNX_FP32, layout.ONNX_ADAPTER_FP32, layout.ONNX_INT8, layout.ONNX_INT4,
                   layout.ONNX_ADAPTER_INT4):
        config = json.loads((folder / "genai_config.json").read_text())
        session = config["model"]["decoder"]["session_options"]
        assert (session["intra_op_num_threads"], session["inter_op_num_threads"]) == (1, 1), folder
        assert (config["search"]["max_length"], config["search"]["past_present_share_buffer"]) == (300, False), folder
    np.testing.assert_allclose(GenaiModel(layout.ONNX_FP32).logits(ids), before, atol=1e-4)
