# Two commands for a fresh machine with only Python and pip:
#   make demo   sets up .venv and runs the demo
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml constraints-cpu.txt requirements-test-openai.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# [dev] includes the serve stack (FastAPI, uvicorn, httpx) and Playwright for the browser
	# test, which drives Debian's /usr/bin/chromium: no `playwright install` (it downloads one).
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[dev]'
	# OpenAI's dall-e package is a test-only reference for the dVAE importer; its torchvision
	# requirement cannot sit beside CPU torch, so it goes in without dependencies.
	$(BIN)/pip install --quiet -c constraints-cpu.txt attrs requests
	$(BIN)/pip install --quiet --no-deps -r requirements-test-openai.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dalle demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out
