# forgetlab: two commands on a fresh machine.
#   make quickstart   set up .venv (torch 2.13.0 CPU wheel + the project), prepare the data, run the quickstart
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

quickstart: data
	@if [ -f $(QUICKSTART_OUT)/run.json ] && grep -q '"status": "finished"' $(QUICKSTART_OUT)/run.json; then \
		echo "$(QUICKSTART_OUT) holds a finished run (never overwritten); its results:"; \
		$(BIN)/forgetlab show $(QUICKSTART_OUT); \
	else \
		$(BIN)/forgetlab run experiments/quickstart.toml --out $(QUICKSTART_OUT); \
	fi

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests

bench: install
	$(BIN)/forgetlab bench peak
	$(BIN)/forgetlab bench train --preset tiny

clean-venv:
	rm -rf $(VENV)
