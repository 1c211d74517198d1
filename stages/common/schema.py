"""The schema of params.yaml: every key's type, range and choices, in one place.

`check_params(cfg)` runs at every entry: `make params` (before params.yaml is written), each
stage's start (`load_params`, so `dvc exp run -S ...` fails at the first stale stage in about a
second), and `make sweep` (every point of the grid, before anything is queued). An error names
the key, the value and the rule, with the reason where the bound is not obvious.

Bounds that depend on the model (serving.max_length against its context length) or on data (an
eval set that exists) are checked where that is known; everything a value alone decides is here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages.common.errors import PipelineError

MISSING = "???"
# Powers of two that MatMulNBits accepts; 512 returned zeros on CPU in onnxruntime 1.26.
BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_ALGORITHMS = ("rtn", "k_quant", "hqq", "gptq", "awq")  # awq: scales folded first (awq.py), then rtn
INT8_METHODS = ("builder", "dynamic")
# The builder (onnxruntime-genai 0.18) makes GroupQueryAttention on CPU in fp32 only; on CUDA, fp32
# gets a packed Attention op wired without KV-cache outputs, an invalid graph.
EXPORT_TARGETS = {"cpu": ("fp32",), "cuda": ("fp16", "bf16")}


def regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"not a regular expression ({e})") from None
    return pattern


def one_of(choices: tuple) -> AfterValidator:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        return value
    check.choices = choices  # type: ignore[attr-defined]  # read by the test that walks the schema
    return AfterValidator(check)


Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1, description="a share of the mix: in [0, 1)")]
Threshold = Annotated[float, Field(gt=0, le=1, description="a similarity threshold: in (0, 1]")]
Regex = Annotated[str, AfterValidator(regex)]
BlockSize = Annotated[int, one_of(BLOCK_SIZES)]
AccuracyLevel = Annotated[int, Field(ge=0, le=4, description="MatMulNBits compute type: 0..4 (4: int8 activations)")]


class Section(BaseModel):
    # strict: `r=4.5` or `strict=yes` is an error, not a silent cast; extra: a key no stage reads is a typo
    model_config = ConfigDict(extra="forbid", strict=True)


class Numerics(Section):
    cpu_capability: Literal["default", "avx2", "avx512"] | None
    mkl_cbwr: Literal["COMPATIBLE", "SSE4_2", "AVX", "AVX2", "AVX512", "AUTO"] | None


class Tokenizer(Section):
    min_frequency: Count


class Pretrain(Section):
    steps: Count
    batch_size: Count
    seq_len: Annotated[int, Field(ge=2, description="a block holds an input and its next token")]
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: NonNegative
    weight_decay: Annotated[float, Field(ge=0)]
    general_task_epochs: NonNegative


class Base(Section):
    tokenizer: Tokenizer
    pretrain: Pretrain


class Similarity(Section):
    prompt: Threshold
    response: Threshold
    spelling: Threshold


class LabelledSet(Section):
    records: str
    truth: str


class Benchmark(Section):
    families: LabelledSet
    external: LabelledSet


class Decontamination(Section):
    long_n: Count
    short_n: Count
    short_overlap: Threshold


class Spark(Section):
    master: Annotated[str, Field(min_length=1)]
    partitions: Count


class Dedup(Section):
    engine: Literal["local", "spark"]
    spark: Spark
    similarity: Similarity
    parameters: bool
    candidates: Threshold
    num_perm: Annotated[int, Field(ge=2, description="MinHash permutations: LSH needs at least one band of two")]
    lsh_weights: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=2, max_length=2)]
    max_near_fraction: Annotated[float, Field(ge=0, le=1, description="a share of the input records")]
    benchmark: Benchmark
    workers: Count
    shard_size: Count
    decontamination: Decontamination

    @model_validator(mode="after")
    def weights_sum_to_one(self) -> Dedup:
        if abs(sum(self.lsh_weights) - 1) > 1e-9:
            raise ValueError(f"lsh_weights={self.lsh_weights}: datasketch's (false positive, false negative) "
                             "weights must sum to 1")
        return self


class Lora(Section):
    r: Annotated[int, Field(ge=1, description="the adapter's rank: 0 trains nothing")]
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]


class Train(Section):
    lora: Lora
    kl_beta: Annotated[float, Field(ge=0, description="β >= 0: a negative β rewards divergence from the base")]
    general_mix: Fraction
    replay_mix: Fraction
    safety_mix: Fraction
    safety_kl_only: bool
    anchor_kl_weight: Annotated[float, Field(ge=0, description="the safety turns' KL weighs this many times β")]
    domain_kl_weight: Annotated[float, Field(ge=0, description="the domain answers' KL weighs this many times β")]
    anchor_answers: Literal["data", "base"]
    anchor_answer_tokens: Count
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    schedule: Literal["cosine", "constant"]
    warmup_steps: NonNegative
    batch_size: Count
    grad_accum: Count
    max_grad_norm: Annotated[float, Field(gt=0)]
    max_steps: Count
    max_seq_len: Annotated[int, Field(ge=2)]
    eval_every: Count
    patience: Count
    gradient_checkpointing: bool
    qlora: bool

    @model_validator(mode="after")
    def mixes_leave_room_for_the_domain(self) -> Train:
        # each share is of the final mix, so together they must leave the domain data a share
        total = self.general_mix + self.replay_mix + self.safety_mix
        if total >= 1:
            raise ValueError(f"general_mix + replay_mix + safety_mix = {total:g}: the shares of the mix must leave "
                             "room for the domain data (sum < 1)")
        return self


class QuantInt8(Section):
    method: Annotated[str, one_of(INT8_METHODS)]
    block_size: BlockSize
    accuracy_level: AccuracyLevel
    quantize_embedding: bool


class Awq(Section):
    clip: bool


class QuantInt4(Section):
    algorithm: Annotated[str, one_of(INT4_ALGORITHMS)]
    block_size: BlockSize
    symmetric: bool
    accuracy_level: AccuracyLevel
    quantize_embedding: bool
    calibration_samples: Count
    awq: Awq
    keep_8bit: list[Regex]


class Serving(Section):
    intra_op_num_threads: Annotated[int, Field(ge=0, description="0: onnxruntime's default")] | None
    inter_op_num_threads: Annotated[int, Field(ge=0, description="0: onnxruntime's default")] | None
    past_present_share_buffer: bool | None
    max_length: Count | None  # its upper bound, the model's context length, is checked at export
    provider_options: dict[str, Any]


class Speed(Section):
    prompt_tokens: Count
    new_tokens: Count
    repeats: Count


class Cost(Section):
    device_hourly_usd: Annotated[float, Field(gt=0)] | None
    prompt_tokens: Count
    output_tokens: Count


class Refusal(Section):
    patterns: Annotated[list[Regex], Field(min_length=1, description="a refusal rate needs a pattern")]


class Loop(Section):
    max_ngram: Count
    min_repeats: Annotated[int, Field(ge=2, description="one occurrence is no repetition")]
    min_run_tokens: Count


class Degeneration(Section):
    max_new_tokens: Count
    task_items: NonNegative
    loop: Loop


class LmEval(Section):
    agreement_items: Count | None
    tasks: list[str]
    include_path: str | None
    limit: Count | Annotated[float, Field(gt=0, lt=1)] | None  # lm-eval: a count, or a share of each task


class Evaluate(Section):
    provider: Annotated[str, one_of(tuple(EXPORT_TARGETS))] | None
    max_new_tokens: Count
    ppl_window: Annotated[int, Field(ge=2)]
    max_task_examples: Count | None
    heldout_documents: Count | None
    speed: Speed
    cost: Cost
    refusal: Refusal
    degeneration: Degeneration
    lm_eval: LmEval


Margin = Annotated[float, Field(ge=0, description="a budget: how far the rung may move, >= 0")]


class Budget(Section):
    """One rung's gates (stages/gates.py RULES); each key absent means no such check."""

    max_ppl_increase: Margin | None = None
    max_general_ppl_increase: Margin | None = None
    max_acc_drop: Margin | None = None
    max_general_acc_drop: Margin | None = None
    min_domain_acc_gain: Annotated[float, Field(ge=-1, le=1, description="points of accuracy")] | None = None
    max_kl: Margin | None = None
    max_kl_p99: Margin | None = None
    min_top1: Annotated[float, Field(ge=0, le=1, description="an agreement rate")] | None = None
    max_refusal_drop: Margin | None = None
    max_over_refusal_increase: Margin | None = None
    max_degeneration_increase: Margin | None = None
    max_size_ratio: Annotated[float, Field(gt=0)] | None = None
    max_p95_ms: Annotated[float, Field(gt=0)] | None = None
    lm_eval: dict[str, Margin] | None = None  # <task>/<metric>: margin


class Gates(Section):
    model_config = ConfigDict(extra="allow", strict=True)  # the rest: one budget per rung, checked below

    strict: bool
    confidence: Annotated[float, Field(gt=0.5, lt=1, description="a one-sided level, e.g. 0.95")]
    resamples: Annotated[int, Field(ge=100, description="bootstrap resamples; fewer make the bounds noisy")]

    @model_validator(mode="after")
    def budgets_name_rungs(self) -> Gates:
        from stages.common.rungs import RUNGS

        judged = [name for name, rung in RUNGS.items() if rung.reference]
        for name, budget in (self.model_extra or {}).items():
            if name not in judged:
                raise ValueError(f"gates.{name}: not a rung with a reference; budgets are keyed by rung "
                                 f"({', '.join(judged)})")
            try:
                Budget.model_validate(budget)
            except ValidationError as e:
                raise ValueError(describe(e, f"gates.{name}", budget)) from None
        return self


class Data(Section):
    name: str
    raw_dir: str
    eval_dir: str
    train: str
    general_task_train: str
    general_corpus: str
    ground_truth: str | None
    safety_train: str | None
    safety_anchors: str | None
    eval: Annotated[dict[str, str], Field(min_length=1, description="decontamination needs an eval set")]


class Arch(Section):
    vocab_size: Annotated[int, Field(ge=2)]
    hidden_size: Count
    intermediate_size: Count
    num_hidden_layers: Count
    num_attention_heads: Count
    num_key_value_heads: Count
    max_position_embeddings: Count
    original_max_position_embeddings: Count
    rope_theta: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def heads_divide(self) -> Arch:
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"hidden_size {self.hidden_size}, num_attention_heads {self.num_attention_heads}, "
                             f"num_key_value_heads {self.num_key_value_heads}: each must divide the one before")
        return self


class Model(Section):
    name: str
    path: str | None
    gguf: str | None             # package:file.gguf or a path: a Llama GGUF the base stage converts
    build: bool
    device: str
    dtype: Literal["float32", "bfloat16", "float16"]
    execution_provider: Annotated[str, one_of(tuple(EXPORT_TARGETS))]
    onnx_precision: str
    lora_targets: Annotated[list[str], Field(min_length=1)]
    arch: Arch | None

    @model_validator(mode="after")
    def profile_is_consistent(self) -> Model:
        if self.build and (self.path is not None or self.arch is None):
            raise ValueError("build=true builds the tiny base from model.arch into models/base: path must be null "
                             "and arch set")
        if self.gguf is not None and (self.build or self.path is not None):
            raise ValueError("gguf: the base stage converts it into models/base: build must be false and path null")
        if not self.build and self.path is None and self.gguf is None:
            raise ValueError("path: required for a local checkpoint (build=false); set it with `make params "
                             "OVERRIDES='model=... model.path=/models/...'` or `dvc exp run -S model.path=...`")
        allowed = EXPORT_TARGETS[self.execution_provider]
        if self.onnx_precision not in allowed:
            raise ValueError(f"onnx_precision={self.onnx_precision!r} on {self.execution_provider}: expected "
                             f"{' or '.join(allowed)} (the builder makes no valid graph otherwise)")
        return self


class Params(Section):
    seed: NonNegative
    numerics: Numerics
    base: Base
    dedup: Dedup
    train: Train
    quant_int8: QuantInt8
    quant_int4: QuantInt4
    serving: Serving
    evaluate: Evaluate
    gates: Gates
    data: Data
    model: Model


def describe(error: ValidationError, prefix: str, given: Any) -> str:
    """One line per problem: the dotted key, the value given, the rule (and why, where known)."""
    lines = []
    for problem in error.errors():
        loc = [str(p) for p in problem["loc"] if not str(p).startswith(("function-after", "constrained"))]
        # a union's alternatives add their type names to the location: keep the keys only
        keys = [p for p in loc if p not in ("int", "float", "str", "bool", "none", "list", "dict", "literal")
                and not p.startswith(("Annotated", "literal["))]
        key = ".".join([prefix, *keys]) if prefix else ".".join(keys)
        value = problem.get("input")
        rule = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            rule = "not a parameter of this section (a typo?)"
        if isinstance(value, dict):  # a rule across keys of a section: its message names them
            lines.append(rule if rule.startswith(f"{key}.") else f"{key}: {rule}")
            continue
        # the reason explains a bound, not a wrong type
        why = None if problem["type"].endswith(("_type", "_parsing")) else field_reason(keys)
        lines.append(f"{key}={value!r}: {rule}{f' ({why})' if why and why not in rule else ''}")
    return "; ".join(dict.fromkeys(lines))


def field_reason(keys: list[str]) -> str | None:
    model: type[BaseModel] | None = Params
    info = None
    for key in keys:
        if model is None or key not in model.model_fields:
            return None
        info = model.model_fields[key]
        annotation = info.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if info is None:
        return None
    if info.description:
        return info.description
    for meta in info.metadata:
        if getattr(meta, "description", None):
            return meta.description
    return None


def check_params(cfg: DictConfig | dict, source: str = "params") -> None:
    """Raise one PipelineError naming every bad key of a composed params tree."""
    tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, DictConfig) else cfg
    unset = missing(tree)
    if unset:
        from stages.common.params import interpolation_sources

        derived = set().union(*interpolation_sources().values())  # `???` only because its source is
        unset = [key for key in unset if key not in derived] or unset
        raise PipelineError(f"{source}: " + "; ".join(
            f"{key}: required ({MISSING} in conf/); set it with `make params OVERRIDES='{key}=...'` or "
            f"`dvc exp run -S {key}=...`" for key in unset))
    try:
        Params.model_validate(tree)
    except ValidationError as e:
        raise PipelineError(f"{source}: {describe(e, '', tree)}") from None


def missing(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is still Hydra's `???` (a profile's required path)."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in missing(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if tree == MISSING else []
