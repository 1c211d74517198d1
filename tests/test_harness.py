"""The harness stage on the shrunk, evaluated ladder: lm-eval (its hf and onnxruntime-genai
backends) agrees with evaluate item by item on every rung, a drifted prompt fails the stage with
the items named, a local stand-in for a standard benchmark runs through both backends and is
gated, and a standard task with no local data is a clear error that writes nothing."""

import json
from pathlib import Path

import pytest
import yaml

from stages import gates, harness
from stages.common import harness as harness_lib
from stages.common import layout
from stages.common.errors import PipelineError
from stages.common.records import read_jsonl
from stages.common.rungs import RUNGS
from tests.conftest import shrunk

pytestmark = pytest.mark.slow


def eval_items(rung: str) -> dict:
    return json.loads((layout.EVAL_ITEMS_DIR / f"{rung}.json").read_text())


def test_lm_eval_agrees_with_evaluate_on_every_item_of_every_rung(evaluated):
    harness.run(shrunk(["evaluate.lm_eval.agreement_items=null"]))
    summary = json.loads(layout.HARNESS_METRICS.read_text())
    assert set(summary) == set(RUNGS)
    for rung in RUNGS:
        ours = eval_items(rung)
        theirs = json.loads((layout.HARNESS_ITEMS_DIR / f"{rung}.json").read_text())
        for name, metric in harness.AGREEMENT.items():
            assert summary[rung]["agreement"][name] == {"items": len(ours[metric]), "disagree": 0}, rung
            docs = theirs[f"pipeline_{name}"]
            assert set(docs) == set(ours[metric])  # keyed by the documents' own ids
            assert {i: int(d["exact_match"]) for i, d in docs.items()} == ours[metric]
        nll = theirs[f"pipeline_{harness.NLL}"]
        assert summary[rung]["agreement"][harness.NLL] == {"items": len(ours["domain_ppl"]), "disagree": 0}
        for doc_id, (total, _count) in ours["domain_ppl"].items():  # on any model, trained or not
            assert nll[doc_id]["perplexity"] == pytest.approx(-total, abs=harness_lib.NLL_TOLERANCE)


def test_a_drifted_prompt_template_fails_the_stage_and_names_the_items(evaluated, tmp_path, monkeypatch):
    """lm-eval given another prompt than evaluate's: the answers' likelihoods change (the shrunk
    model answers nothing right, so exact match alone could not tell), the stage says where."""
    for attr in ("TASK_TEMPLATE", "NLL_TEMPLATE"):
        template = yaml.safe_load(getattr(harness_lib, attr).read_text())
        template["doc_to_text"] = "Answer briefly. {{prompt}}"
        drifted = tmp_path / f"{attr}.yaml"
        drifted.write_text(yaml.safe_dump(template))
        monkeypatch.setattr(harness_lib, attr, drifted)
    with pytest.raises(PipelineError, match=r"torch_lora: lm-eval and evaluate disagree on the answer NLL of 12 of "
                                            r"12 domain_answer_nll items: dom-test-0000 \(lm-eval "):
        harness.run(shrunk())
    assert not layout.HARNESS_METRICS.exists() and not layout.HARNESS_ITEMS_DIR.exists()


def write_local_benchmark(folder: Path) -> None:
    """A stand-in for a standard multiple-choice benchmark (loglikelihood requests, as MMLU or
    ARC): a task YAML over a local JSONL file of questions from the general test set, the right
    answer against another item's."""
    rows = read_jsonl("data/eval/general_test.jsonl", "task")[:24]
    docs = [{"id": r["id"], "question": r["prompt"], "choices": [r["answer"], rows[(i + 1) % len(rows)]["answer"]],
             "gold": 0} for i, r in enumerate(rows)]
    folder.mkdir(parents=True)
    (folder / "local_mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "local_mc.yaml").write_text(yaml.safe_dump({
        "task": "local_mc", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((folder / "local_mc.jsonl").resolve())}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}))


def test_a_local_standard_task_runs_on_both_backends_and_is_gated(evaluated):
    write_local_benchmark(Path("my_tasks"))
    cfg = shrunk(["evaluate.lm_eval.tasks=[local_mc]", "evaluate.lm_eval.include_path=my_tasks",
                  "+gates.onnx_int4.lm_eval={local_mc/acc: 0.5}", "+gates.torch_lora.lm_eval={local_mc/acc: 0.5}"])
    harness.run(cfg)
    summary = json.loads(layout.HARNESS_METRICS.read_text())
    for rung in RUNGS:  # both backends: hf (torch rungs) and onnxruntime-genai (the rest)
        task = summary[rung]["tasks"]["local_mc"]
        assert task["items"] == 24 and 0 <= task["metrics"]["acc"] <= 1 and task["higher_is_better"] == {"acc": True}
    docs = json.loads((layout.HARNESS_ITEMS_DIR / "onnx_int4.json").read_text())["local_mc"]
    assert set(docs) == {json.loads(line)["id"] for line in Path("my_tasks/local_mc.jsonl").read_text().splitlines()}
    gates.run(cfg)
    details = json.loads(layout.GATES_METRICS.read_text())["details"]
    checks = [c for c in details if c["metric"] == "lm_eval/local_mc/acc"]
    assert {(c["rung"], c["reference"], c["items"], c["threshold"]) for c in checks} == \
        {("onnx_int4", "onnx_fp32", 24, -0.5), ("torch_lora", "torch_base", 24, -0.5)}
    assert all(c["verdict"] in ("pass", "fail", "inconclusive") for c in checks)


def test_an_lm_eval_gate_on_a_metric_the_harness_did_not_produce_is_an_error(evaluated):
    harness.run(shrunk())
    with pytest.raises(PipelineError, match=r"gates.onnx_int4.lm_eval.arc_easy/acc: .* no metric 'acc' of task "
                                            r"'arc_easy'"):
        gates.run(shrunk(["+gates.onnx_int4.lm_eval={arc_easy/acc: 0.02}"]))


def test_a_standard_task_without_local_data_fails_offline_and_writes_nothing(evaluated):
    with pytest.raises(PipelineError, match=r"lm-eval task 'arc_easy': its data is not on this machine .*"
                                            r"python -m tools.fetch_lm_eval_data arc_easy"):
        harness.run(shrunk(["evaluate.lm_eval.tasks=[arc_easy]"]))
    assert not layout.HARNESS_METRICS.exists() and not layout.HARNESS_ITEMS_DIR.exists()


def test_the_whitespace_lm_eval_moves_into_the_answer_is_measured_and_taken_back_out(evaluated):
    """A chat template whose generation prompt ends in a newline (ChatML) has lm-eval score that
    newline as the answer's first token; the agreement check takes its log-likelihood, asked of
    the same backend, back out. On the Phi template (no trailing whitespace) there is none."""
    from stages.common.checkpoint import load_tokenizer
    from stages.common.language_model import TorchModel
    from stages.common.lm import log_softmax

    model = harness_lib.harness_model(RUNGS["torch_lora"], layout.MERGED_DIR, "float32", "cpu", None)
    rows = read_jsonl("data/eval/domain_test.jsonl", "task")[:3]
    prompts = {r["id"]: r["prompt"] for r in rows}
    assert harness_lib.moved_whitespace_loglikelihood(model, prompts) == {}
    phi = model.apply_chat_template
    model.apply_chat_template = lambda history, add_generation_prompt=True: phi(history) + "\n"
    moved = harness_lib.moved_whitespace_loglikelihood(model, prompts)
    assert set(moved) == set(prompts)
    tokenizer, torch_model = load_tokenizer(layout.MERGED_DIR), TorchModel(layout.MERGED_DIR)
    for item, prompt in prompts.items():
        context = tokenizer(phi([{"role": "user", "content": prompt}]), add_special_tokens=False)["input_ids"]
        newline = tokenizer(phi([{"role": "user", "content": prompt}]) + "\n", add_special_tokens=False)["input_ids"]
        assert newline[: len(context)] == context and len(newline) == len(context) + 1
        expected = log_softmax(torch_model.logits(context))[-1, newline[-1]]
        assert moved[item] == pytest.approx(expected, abs=1e-4) and moved[item] < 0
    # The check subtracts it: lm-eval's total, less the newline, against evaluate's NLL.
    theirs = {i: {"perplexity": -1.0 + moved[i]} for i in prompts}
    ours = {i: [1.0, 3] for i in prompts}
    assert harness_lib.nll_disagreements(ours, theirs, moved) == []
    assert harness_lib.nll_disagreements(ours, theirs) == sorted(i for i in prompts if abs(moved[i]) > 0.01)
