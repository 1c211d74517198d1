# The common paths, on top of DVC. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

OVERRIDES ?=
REV ?= main
R ?= 4,8
BETA ?= 0,0.2
ALGOS ?= rtn,awq
JOBS ?= 1
SEEDS ?= 1234,1,2,3,4
DEDUP_RECORDS ?= 1000000
REAL ?= smollm2
# make review's pipeline folder: . (the embedded default) or pipelines/$(REAL)
PIPELINE ?= .

.PHONY: help setup setup-gpu params repro test test-fast lint bench bench-dedup bench-real gguf-rung real review sweep sweep-int4 sweep-report verify-seeds clean

help: ## this list
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock requirements-real.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and alone, so no later requirement picks another build. Where no CPU wheel of
	# 2.13.0 is at hand locally, pip's default is a CUDA build (GBs): install torch from
	# PyTorch's CPU index first if you want the CPU one.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -r requirements-real.txt
	touch $@

setup: $(STAMP) ## create .venv and install the pinned dependencies (idempotent)

setup-gpu: $(STAMP) ## on a CUDA machine: onnxruntime(-genai) CUDA builds and bitsandbytes instead of CPU ones
	$(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-genai
	$(BIN)/python -m pip install -q -r requirements-gpu.txt

params: $(STAMP) ## compose conf/ into params.yaml (OVERRIDES="model=phi4_mini model.path=...")
	$(BIN)/python -m stages.common.params $(OVERRIDES)

repro: params ## run the whole pipeline on the embedded default (dvc repro), then enforce the gates' verdict
	$(BIN)/dvc repro
	$(BIN)/python -m stages.gates --enforce

test: $(STAMP) ## run every test (slow end-to-end ones included)
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## the quick tests only (skips the slow end-to-end runs of real stages)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

bench: $(STAMP) ## benchmarks: dedup signatures/s vs a naive loop; decode tok/s per rung vs transformers
	$(BIN)/python -m benchmarks.dedup_signatures
	$(BIN)/dvc repro --quiet quant_int4 quant_int8
	$(BIN)/python -m benchmarks.decode_speed

bench-dedup: $(STAMP) ## dedup's local and Spark engines side by side on a generated corpus (DEDUP_RECORDS=1000000)
	# Spark's driver JVM starts with 1 GB unless told: a million records' shuffle needs more.
	PYSPARK_SUBMIT_ARGS="$${PYSPARK_SUBMIT_ARGS:---driver-memory 8g pyspark-shell}" \
		$(BIN)/python -m benchmarks.dedup_engines --records $(DEDUP_RECORDS)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	# llama.cpp for the real-size benchmark only; pip compiles it (minutes, once) and caches the wheel.
	CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" $(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $@

BENCH_DEPTHS ?= --layers 2,4 --check 8
bench-real: $(BENCH_STAMP) ## speed at Phi-4-mini's 32 layers (fitted on 2 and 4, checked at 8): every rung vs the memory limit and llama.cpp
	$(BIN)/python -m benchmarks.real_size $(BENCH_DEPTHS) --out benchmarks/real_size.json $(BENCH_ARGS)

gguf-rung: $(BENCH_STAMP) ## after the ladder ran: the merged model as llama.cpp Q4_K_M and Q8_0, scored by evaluate [PIPELINE=pipelines/smollm2]
	cd $(PIPELINE) && $(abspath $(BIN))/python -m tools.gguf_rung $(GGUF_ARGS)

real: $(STAMP) ## the ladder on real weights (SmolLM2-135M-Instruct) in pipelines/$(REAL)/: every stage, verdicts recorded
	$(BIN)/python -m tools.pipeline_folder $(REAL)
	$(BIN)/python -m stages.common.params --output pipelines/$(REAL)/params.yaml pipeline=$(REAL) $(OVERRIDES)
	cd pipelines/$(REAL) && $(abspath $(BIN))/dvc repro
	@cat pipelines/$(REAL)/reports/gates.md

review: $(STAMP) ## for a pull request: gated metrics vs $(REV) paired per item, the gates, all metrics [PIPELINE=pipelines/smollm2]
	@cd $(PIPELINE) && $(abspath $(BIN))/python -m tools.review --rev $(REV)
	@echo; echo "## All metrics vs $(REV)"; echo
	@cd $(PIPELINE) && $(abspath $(BIN))/dvc metrics diff $(REV) --md

sweep: $(STAMP) ## queue and run a grid: make sweep R="4,8,16" BETA="0,0.05,0.2" [JOBS=1]
	$(BIN)/python -m stages.common.params --check-grid 'train.lora.r=$(R)' 'train.kl_beta=$(BETA)'
	$(BIN)/dvc exp run --queue -S 'train.lora.r=$(R)' -S 'train.kl_beta=$(BETA)' -S 'gates.strict=false'
	$(BIN)/dvc queue start --jobs $(JOBS)
	@while $(BIN)/dvc queue status | grep -qE 'Queued|Running'; do sleep 10; done
	$(BIN)/dvc queue stop
	$(BIN)/dvc queue status

sweep-int4: $(STAMP) ## queue and run INT4 algorithms: make sweep-int4 ALGOS="rtn,awq,gptq,hqq" [JOBS=1]
	$(BIN)/python -m stages.common.params --check-grid 'quant_int4.algorithm=$(ALGOS)'
	$(BIN)/dvc exp run --queue -S 'quant_int4.algorithm=$(ALGOS)' -S 'gates.strict=false'
	$(BIN)/dvc queue start --jobs $(JOBS)
	@while $(BIN)/dvc queue status | grep -qE 'Queued|Running'; do sleep 10; done
	$(BIN)/dvc queue stop
	$(BIN)/dvc queue status

sweep-report: $(STAMP) ## the sweep as a Markdown table + reports/sweep.png (beta vs accuracy and drift)
	$(BIN)/python -m tools.sweep_report

verify-seeds: $(STAMP) ## base + LoRA over seeds, each gate's verdict per seed: make verify-seeds [SEEDS=1,2,3] [OVERRIDES=...]
	$(BIN)/python -m tools.verify_seeds --seeds $(SEEDS) $(OVERRIDES)

clean: ## remove pipeline outputs (not the venv)
	rm -rf models data/clean metrics/train metrics/eval .dvc/tmp/exps
