# One command each: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= Qwen/Qwen2.5-VL-7B-Instruct

# transformers 5.17 (the floor of requirements.txt), laid over the venv by test-oldest
OLDEST := .venv-oldest

.PHONY: setup demo demo-tiny test test-slow test-oldest test-all tiny clean

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

test-oldest: setup             ## the model-code tests on the oldest transformers the requirements allow
	test -f $(OLDEST)/.installed || ($(BIN)/pip install -q --no-deps --target $(OLDEST) \
	  transformers==5.17.0 "huggingface_hub>=1.5,<2" && touch $(OLDEST)/.installed)
	PYTHONPATH=$(OLDEST) $(BIN)/python -c "import transformers as t; assert t.__version__ == '5.17.0', t.__version__"
	PYTHONPATH=$(OLDEST) $(BIN)/python -m pytest -q -m "not slow" tests/test_qwen_files.py \
	  tests/test_engine_tiny.py tests/test_model.py tests/test_train_exact.py tests/test_train_grpo.py

test-all: test test-slow test-oldest

clean:
	rm -rf $(VENV) $(OLDEST) tiny-model .pytest_cache test-artifacts
