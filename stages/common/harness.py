"""lm-evaluation-harness (lm-eval) on a rung, through the harness's own backends: the field's
standard harness as a second, independent evaluator beside ours, and the way to standard tasks.

- torch rungs: lm-eval's `hf` backend (HFLM) on the rung's checkpoint folder;
- ONNX rungs: its `onnxruntime-genai` backend, subclassed (`ChatGenai`) for the two things it
  lacks in 0.4.13: the chat template (it implements neither `tokenizer_name` nor
  `apply_chat_template`, so `apply_chat_template=True` raises NotImplementedError) and the
  hot-swap adapter (it never creates og.Adapters), which the adapter rungs need as served.

Tasks are lm-eval task configs: ours (conf/lm_eval/exact_match.yaml, filled in from params) and
any task name lm-eval knows, run only against local data (offline flags set here, never the
network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from stages.common.errors import PipelineError
from stages.common.layout import ADAPTER_FILE
from stages.common.params import REPO_ROOT
from stages.common.rungs import Rung

TASK_TEMPLATE = REPO_ROOT / "conf" / "lm_eval" / "exact_match.yaml"
NLL_TEMPLATE = REPO_ROOT / "conf" / "lm_eval" / "answer_nll.yaml"
NLL_TOLERANCE = 0.01  # nats per answer: batched vs unbatched kernels differ by ~1e-5; any drift by far more
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline() -> None:
    """Set before lm-eval, datasets or transformers are imported: they read the flags at import.
    lm-eval's own progress bars follow ours (runtime.progress): a line every 30 s in logs."""
    import sys

    os.environ.update(OFFLINE)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "30")


def task_from(template: Path, name: str, data_file: str | Path) -> dict:
    """A task config of ours (a dict lm-eval accepts like a YAML file) over one of our JSONL sets."""
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    config["task"] = name
    config["dataset_kwargs"]["data_files"]["test"] = str(Path(data_file).resolve())
    return config


def exact_match_task(name: str, data_file: str | Path, end_of_turn: str, max_new_tokens: int) -> dict:
    config = task_from(TASK_TEMPLATE, name, data_file)
    config["generation_kwargs"] |= {"until": [end_of_turn], "max_gen_toks": int(max_new_tokens)}
    return config


def answer_nll_task(name: str, data_file: str | Path, end_of_turn: str) -> dict:
    config = task_from(NLL_TEMPLATE, name, data_file)
    config["doc_to_target"] += end_of_turn
    return config


class _AdapterActive:
    """The onnxruntime_genai module as the backend sees it, except that every Generator it makes
    has the adapter active: the backend builds its generators inline, so this is the one seam
    that needs no copy of its code."""

    def __init__(self, og, adapters, name: str):
        self._og, self._adapters, self._name = og, adapters, name

    def __getattr__(self, attr: str):
        return getattr(self._og, attr)

    def Generator(self, model, params):
        generator = self._og.Generator(model, params)
        generator.set_active_adapter(self._adapters, self._name)
        return generator


def chat_genai_class():
    from lm_eval.models.onnxruntime_genai import ONNXRuntimeGenAILM

    class ChatGenai(ONNXRuntimeGenAILM):
        """lm-eval's onnxruntime-genai backend with the folder's chat template and, optionally,
        an adapter file active on every request."""

        def __init__(self, pretrained: str, adapter_file: str | None = None, **kwargs):
            self.adapter_file = adapter_file
            super().__init__(pretrained, **kwargs)

        def _select_ep(self, config) -> None:
            # The folder's genai_config names the pruned serving graph; loglikelihoods need the
            # logits of every position, so the full graph is opened (serving_graph.py).
            from stages.common.serving_graph import graph_overlay

            config.overlay(graph_overlay())
            super()._select_ep(config)

        @property
        def tokenizer_name(self) -> str:
            return str(self.model_dir).replace("/", "__")

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)

        def _load(self) -> None:
            super()._load()
            if self.adapter_file:
                adapters = self.og.Adapters(self.model)
                adapters.load(self.adapter_file, "adapter")
                self.og = _AdapterActive(self.og, adapters, "adapter")

    return ChatGenai


def harness_model(rung: Rung, folder: Path, dtype: str, device: str, provider: str | None):
    """The rung as lm-eval loads it, one request at a time (batch 1: padding would change the
    numerics that the per-item agreement compares)."""
    if rung.runtime == "torch":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=str(folder), dtype=dtype, device=device, batch_size=1)
    adapter = str(folder / ADAPTER_FILE) if rung.adapter else None
    return chat_genai_class()(str(folder), adapter_file=adapter, execution_provider=provider)


def load_tasks(tasks: Sequence[str | dict], include_path: str | None) -> dict:
    """lm-eval's task objects, their data loaded now (before any model runs or anything is
    written): a task whose data is not on this machine is a clear error here."""
    from lm_eval.tasks import TaskManager, get_task_dict

    # Indexing lm-eval's thousands of bundled task YAMLs costs ~10 s: only when a task is named.
    named = [t for t in tasks if not isinstance(t, Mapping)]
    manager = TaskManager(include_path=include_path, include_defaults=bool(named))
    loaded = {}
    for task in tasks:
        name = task["task"] if isinstance(task, Mapping) else task
        if not isinstance(task, Mapping) and name not in manager.all_tasks:
            raise PipelineError(f"evaluate.lm_eval.tasks: {name!r} is not an lm-eval task (nor in "
                                f"evaluate.lm_eval.include_path={include_path!r})")
        try:
            loaded |= get_task_dict([task], manager)
        except Exception as err:  # datasets' offline errors: ConnectionError, FileNotFoundError, ValueError...
            raise PipelineError(
                f"lm-eval task {name!r}: its data is not on this machine ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). Runs are offline (HF_DATASETS_OFFLINE=1): on a machine with "
                f"a network run `python -m tools.fetch_lm_eval_data {name}`, then copy the datasets cache it "
                "prints (~/.cache/huggingface/datasets; or set HF_DATASETS_CACHE) here; or write a task YAML over "
                "local files and name its folder in evaluate.lm_eval.include_path") from err
    return loaded


def leaf_tasks(task_dict: Mapping) -> dict:
    """name -> Task for every task, groups (mmlu) flattened to their subtasks."""
    from lm_eval.api.task import Task

    out = {}
    for value in task_dict.values():
        if isinstance(value, Task):
            out[value.config.task] = value
        elif isinstance(value, Mapping):
            out |= leaf_tasks(value)
    return out


def run_tasks(model, task_dict: Mapping, limit: int | None, seed: int) -> dict:
    """lm-eval's evaluate on loaded tasks -> {task: {"metrics": {...}, "higher_is_better": {...},
    "items": {doc id: {metric: value, "response": text}}}}. Per-item results are keyed by the
    document's own `id` where it has one (ours), else by lm-eval's doc_id."""
    import random

    import numpy as np
    from lm_eval.evaluator import evaluate

    random.seed(seed)
    np.random.seed(seed)
    results = evaluate(lm=model, task_dict=task_dict, limit=limit, bootstrap_iters=0, log_samples=True,
                       apply_chat_template=True, fewshot_as_multiturn=False, verbosity="WARNING")
    out = {}
    for name in leaf_tasks(task_dict):
        metrics = {k.split(",")[0]: v for k, v in results["results"][name].items()
                   if "," in k and not k.split(",")[0].endswith("_stderr")}
        higher = results["higher_is_better"].get(name, {})
        items = {}
        for sample in results["samples"][name]:
            doc = sample["doc"]
            key = str(doc["id"]) if isinstance(doc, Mapping) and "id" in doc else str(sample["doc_id"])
            responses = sample.get("filtered_resps") or [""]
            first = responses[0]
            items[key] = {**{m: float(sample[m]) for m in metrics if m in sample
                             and isinstance(sample[m], (int, float, bool))},
                          "response": first if isinstance(first, str) else str(first)}
        out[name] = {"metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                     "higher_is_better": {k: bool(v) for k, v in higher.items()}, "items": items}
    return out


def disagreements(ours: Mapping[str, int], theirs: Mapping[str, Mapping]) -> list[str]:
    """Items where lm-eval's exact_match differs from evaluate's (only items both scored)."""
    return sorted(i for i in theirs if i in ours and round(theirs[i]["exact_match"]) != int(ours[i]))


def nll_disagreements(ours: Mapping[str, Sequence[float]], theirs: Mapping[str, Mapping],
                      moved: Mapping[str, float] | None = None) -> list[str]:
    """Items where lm-eval's answer log-likelihood, less that of the whitespace it moved into the
    answer (`moved`, from `moved_whitespace_loglikelihood`), is not minus evaluate's NLL ([NLL, tokens])."""
    moved = moved or {}
    return sorted(i for i in theirs if i in ours
                  and abs(theirs[i]["perplexity"] - moved.get(i, 0.0) + ours[i][0]) > NLL_TOLERANCE)


def moved_whitespace_loglikelihood(model, prompts: Mapping[str, str]) -> dict[str, float]:
    """lm-eval (TemplateLM._encode_pair) moves a context's trailing whitespace into the
    continuation, a habit from plain-text prompts ("Answer:" + " B"). A chat template whose
    generation prompt ends in a newline (ChatML: "<|im_start|>assistant\n") so has lm-eval score
    that newline as the answer's first token, which evaluate, like training and serving, reads as
    prompt. Its log-likelihood, asked of the same backend through lm-eval's own request API, per
    item id (empty when the template ends in no whitespace, as the Phi formats)."""
    from lm_eval.api.instance import Instance

    contexts = {i: model.apply_chat_template([{"role": "user", "content": p}]) for i, p in prompts.items()}
    pairs = {i: (c.rstrip(), c[len(c.rstrip()):]) for i, c in contexts.items() if c != c.rstrip()}
    if not pairs:
        return {}
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs.values()]
    return {i: float(value[0]) for i, value in zip(pairs, model.loglikelihood(requests, disable_tqdm=True),
                                                    strict=True)}
