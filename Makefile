# forgetlab: two commands on a fresh machine.
#   make quickstart   set up .venv (torch 2.13.0 CPU wheel + the project), prepare the data, run the quickstart study
#   make test         set up .venv if needed, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.forgetlab-installed
QUICKSTART_OUT := results/quickstart

.PHONY: install quickstart data test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/forgetlab data prepare --tokenizer bpe-2k --domains code,math,medical,legal,dialogue

# The quickstart: the T/W/R ablation (docs/cl_mechanisms.md: sparsity T x selective write W x
# sleep R) at its
# `quickstart` scale (8 groups, 1 seed, 1 order, 50 steps per stage), its report, and the plain
# fine-tuning group's R matrices. A second `make quickstart` reuses the finished runs.
quickstart: data
	$(BIN)/forgetlab run cl_mechanisms --scale quickstart --workers 2 --quiet --out $(QUICKSTART_OUT)
	$(BIN)/forgetlab report $(QUICKSTART_OUT)
	$(BIN)/forgetlab show $(QUICKSTART_OUT) --group T0_W0_R0
	@echo "report: $(QUICKSTART_OUT)/report.html (and report.md, analysis.json, plots/)"

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests

bench: install
	$(BIN)/forgetlab bench peak
	$(BIN)/forgetlab bench train --preset tiny

clean-venv:
	rm -rf $(VENV)
