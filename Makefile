# One command each: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= Qwen/Qwen2.5-VL-7B-Instruct

.PHONY: setup demo demo-tiny test test-slow test-all tiny clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed

demo: setup                     ## the demo on MODEL (default: Qwen/Qwen2.5-VL-7B-Instruct)
	$(BIN)/python app.py --model $(MODEL)

tiny: setup                     ## a tiny random Qwen2.5-VL in ./tiny-model (offline try of the tools)
	test -f tiny-model/config.json || $(BIN)/python -m mgpo.tiny tiny-model

demo-tiny: tiny                 ## the demo on the tiny random model: no download, answers are noise
	$(BIN)/python app.py --model tiny-model

test: setup                     ## the default suite (a few minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup                ## browser, training-curve and multi-process tests
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]  # 5: no slow tests selected

test-all: test test-slow

clean:
	rm -rf $(VENV) tiny-model .pytest_cache test-artifacts
