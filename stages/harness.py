"""harness: lm-evaluation-harness on every rung -> metrics/harness.json, metrics/harness/items/<rung>.json.

    python -m stages.harness [overrides]

Every rung of stages/common/rungs.py, loaded by lm-eval's own backends (stages/common/harness.py:
`hf` for the checkpoints, `onnxruntime-genai` for the ONNX rungs, the adapter rungs with their
adapter file active as served), in one process (lm-eval's import alone costs ~10 s):
1. agreement: our domain and general test sets as lm-eval tasks (conf/lm_eval/exact_match.yaml),
   the first `evaluate.lm_eval.agreement_items` of each (null: all). Per item, lm-eval's exact
   match must equal evaluate's (metrics/eval/items/<rung>.json): a disagreement is drift between
   our prompt construction, tokenizer or stopping and the standard harness's, and fails the
   stage with the items named;
2. `evaluate.lm_eval.tasks`: standard lm-eval tasks (mmlu subsets, gsm8k, arc_easy...) or tasks
   under `evaluate.lm_eval.include_path`, on local data only. Their metrics go in the summary,
   their per-document results in the items file, where gates bound them paired on the same
   documents (`gates.<rung>.lm_eval: {<task>/<metric>: margin}`).
Every task's data is loaded before any model runs, so a missing dataset fails before anything
is written.
"""

from __future__ import annotations

import json
import time
from functools import partial

from omegaconf import DictConfig

from stages.common import harness, layout
from stages.common.atomic import write_json, write_text
from stages.common.chat import end_of_turn
from stages.common.checkpoint import base_checkpoint, load_tokenizer
from stages.common.errors import PipelineError
from stages.common.item_metrics import items_json
from stages.common.records import read_jsonl
from stages.common.rungs import RUNGS
from stages.common.runtime import get_logger, stage_main

log = get_logger(__name__)

AGREEMENT = {"domain": "domain_acc", "general": "general_acc"}  # our exact-match task -> evaluate's metric
NLL = "domain_answer_nll"  # the domain answers' log-likelihood -> evaluate's domain_ppl items


def task_configs(cfg: DictConfig) -> tuple[dict, list]:
    """(our agreement tasks by set name, the standard tasks), as lm-eval takes them."""
    eot = end_of_turn(load_tokenizer(layout.MERGED_DIR))
    files = {"domain": cfg.data.eval.domain_test, "general": cfg.data.eval.general_test}
    ours = {name: harness.exact_match_task(f"pipeline_{name}", files[name], eot, cfg.evaluate.max_new_tokens)
            for name in AGREEMENT}
    ours[NLL] = harness.answer_nll_task(f"pipeline_{NLL}", files["domain"], eot)
    return ours, list(cfg.evaluate.lm_eval.tasks or [])


def evaluate_items(rung: str) -> dict:
    path = layout.EVAL_ITEMS_DIR / f"{rung}.json"
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run `dvc repro evaluate@{rung}` first")
    return json.loads(path.read_text())


def run(cfg: DictConfig) -> None:
    harness.offline()
    h = cfg.evaluate.lm_eval
    ours, standard = task_configs(cfg)
    ours_loaded = harness.load_tasks(list(ours.values()), None)
    standard_loaded = harness.load_tasks(standard, h.include_path) if standard else {}
    evaluated = {name: evaluate_items(name) for name in RUNGS}
    prompts = {str(r["id"]): r["prompt"] for r in read_jsonl(cfg.data.eval.domain_test, "task")}
    # The first items of each set, as evaluate read them (it may have read fewer).
    caps = [n for n in (h.agreement_items, cfg.evaluate.max_task_examples) if n is not None]
    agreement_limit = min(caps) if caps else None

    summary, items_by_rung, problems = {}, {}, []
    for name, rung in RUNGS.items():
        start = time.perf_counter()
        folder = base_checkpoint(cfg) if name == "torch_base" else rung.folder
        model = harness.harness_model(rung, folder, cfg.model.dtype, cfg.model.device, cfg.evaluate.provider)
        results = harness.run_tasks(model, ours_loaded, agreement_limit, cfg.seed)
        if standard_loaded:
            results |= harness.run_tasks(model, standard_loaded, h.limit, cfg.seed)
        agreement = {}
        scored = results[f"pipeline_{NLL}"]["items"]
        moved = harness.moved_whitespace_loglikelihood(model, {i: prompts[i] for i in scored})
        checks = [(s, m, harness.disagreements, "exact match") for s, m in AGREEMENT.items()] + \
            [(NLL, "domain_ppl", partial(harness.nll_disagreements, moved=moved), "answer NLL")]
        for set_name, metric, compare, what in checks:
            task, ours = results[f"pipeline_{set_name}"], evaluated[name][metric]
            wrong = compare(ours, task["items"])
            agreement[set_name] = {"items": len(task["items"]), "disagree": len(wrong)}
            if wrong:
                shown = ", ".join(f"{i} (lm-eval {task['items'][i]}, evaluate {ours[i]})" for i in wrong[:3])
                problems.append(f"{name}: lm-eval and evaluate disagree on the {what} of {len(wrong)} of "
                                f"{len(task['items'])} {set_name} items: {shown}")
        seconds = round(time.perf_counter() - start, 1)
        summary[name] = {"agreement": agreement, "seconds": seconds,
                         "tasks": {t: {"metrics": r["metrics"], "higher_is_better": r["higher_is_better"],
                                       "items": len(r["items"])} for t, r in results.items()}}
        items_by_rung[name] = {t: r["items"] for t, r in results.items()}
        log.info("%s: lm-eval agreement %s, %.1f s", name, agreement, seconds)
    if problems:
        raise PipelineError("lm-eval disagrees with evaluate (chat template, tokenizer or stopping drift?):\n  "
                            + "\n  ".join(problems))
    for name, items in items_by_rung.items():
        write_text(layout.HARNESS_ITEMS_DIR / f"{name}.json", items_json(items))
    write_json(layout.HARNESS_METRICS, summary)


main = stage_main(run)

if __name__ == "__main__":
    main()
