# Two commands do everything on a fresh machine (Python 3.11, no GPU, no Hub access):
#   make demo   set up (venv, dependencies, built-in model) and launch the app on 127.0.0.1:7860
#   make test   set up and run the test suite (fast tests; `make test-slow` runs the slow ones)
# Both are idempotent: stamps skip work already done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch for machines without a GPU; override e.g. TORCH='torch' for a CUDA build.
TORCH ?= torch==2.13.0
export SAFETY_DEMO_CACHE ?= $(HOME)/.cache/safety_demo
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-all setup model model-fast bench screenshot clean

demo: $(VENV)/.runtime model
	$(PY) app.py

test: $(VENV)/.dev model-fast
	$(PY) -m pytest -q -m "not slow and not browser"

test-slow: $(VENV)/.dev model model-fast
	$(PY) -m pytest -q -m "slow or browser"

test-all: test test-slow

setup: $(VENV)/.runtime model

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

model: $(VENV)/.runtime
	$(PY) -m safety_demo setup --variant default
	$(PY) -m safety_demo fit-probe --model builtin

model-fast: $(VENV)/.runtime
	$(PY) -m safety_demo setup --variant fast

screenshot: $(VENV)/.dev model  # the README's picture: inputs + three answers, from the browser test
	$(PY) -m pytest -q -m browser tests/app/test_browser.py
	$(PY) -c "from PIL import Image; im = Image.open('out/screenshots/app-full.png').convert('RGB'); im.crop((0, 0, 1280, 1460)).quantize(colors=128).save('docs/screenshot.png', optimize=True)"

bench: $(VENV)/.runtime model
	$(PY) -m safety_demo bench

clean:
	rm -rf $(VENV) .pytest_cache .gradio
