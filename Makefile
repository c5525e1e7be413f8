# The course's two commands: `make lab` (set up and open JupyterLab) and `make test` (set up and test).
# Everything lands in .venv; nothing is installed globally.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.labkit-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
           HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
PORT   ?= 8888
CHROMIUM ?= /usr/bin/chromium
LATEST ?= .venv-latest
# where test-latest gets torch (a CPU build); TORCH_INDEX= for PyPI and pip.conf only
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install llamacpp browser-deps lab test test-defaults test-models test-fast test-offline test-latest doctor bench render pins data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP) llamacpp

# llama.cpp for lesson 17, prebuilt (node-llama-cpp's npm package; its pin is in labkit/llamacpp.py): npm, once,
# about 11 MB into ~/.cache/labkit/llama.cpp, loaded from Python with ctypes. Without npm it says so and lesson 17
# prints the commands instead of running the file; a failed download fails the install.
llamacpp: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(PY) -m labkit.llamacpp; \
	else echo "llama.cpp: npm not found; lesson 17 will not run its GGUF files (apt-get install npm, then make llamacpp)"; fi

# The browser test drives Debian's Chromium through Playwright (Playwright's own browser download is
# never used). Installed here when missing and possible (root with apt-get), and then REQUIRED: a failed
# install fails `make test` instead of skipping the test. Without root or apt-get the test skips and says why.
CAN_APT := $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && echo 1)
browser-deps:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif [ -n "$(CAN_APT)" ]; then \
	  echo "browser test: installing chromium with apt-get"; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    { echo "browser test: apt-get install chromium failed"; exit 1; }; \
	else echo "browser test: no $(CHROMIUM) and no root apt-get; it will be skipped (sudo apt-get install chromium, or CHROMIUM=/path)"; fi

lab: install  ## open the course in JupyterLab
	$(OFFLINE) $(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root,)

# make test runs on WORKERS pytest workers (pytest-xdist) with one torch thread each (on the 2-core reference machine
# two processes with two threads each only contend). --dist worksteal: a worker that runs out of tests takes half of
# the other's queue. With xdist's default (load) all twenty notebook runs sat in one worker's queue and the other
# worker stood idle for the last 3 minutes: pytest 9 min 0 s against 8 min 0 s, same clone. Three workers: 8 min 32 s.
WORKERS ?= 2
PYTEST_ARGS ?=  # e.g. make test PYTEST_ARGS=--durations=25
test: install browser-deps  ## the whole suite: unit tests, every notebook once at its fast parameters (papermill), the browser test
	$(OFFLINE) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LABKIT_CHROMIUM=$(CHROMIUM) $(if $(CAN_APT),LABKIT_REQUIRE_BROWSER=1,) \
	  $(PY) -m pytest tests -q -m "not models" -n $(WORKERS) --dist worksteal $(PYTEST_ARGS)

test-defaults: install  ## every lesson at its defaults under nbval, as a learner runs it (slow: about a minute each)
	$(OFFLINE) $(PY) -m pytest notebooks --nbval-lax --nbval-cell-timeout=600 -q

test-models: install  ## every lesson with each locally built Hub-style model (tests/hub_models.py), at fast parameters
	$(OFFLINE) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest tests/test_notebooks.py -m models -q -n $(WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: install  ## unit tests only, no notebooks
	$(OFFLINE) $(PY) -m pytest tests -q -m "not slow and not models"

test-offline: install  ## the suite with the network cut off (needs root: unshare -n)
	unshare -n sh -c 'ip link set lo up 2>/dev/null; $(OFFLINE) $(PY) -m pytest tests -q -m "not models"'

test-latest:  ## the suite against the newest releases of the libraries (no pins, no upper bounds) in $(LATEST)
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),) -e ".[test]"
	$(LATEST)/bin/python -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),) --upgrade \
	  torch transformers tokenizers peft trl bitsandbytes datasets accelerate safetensors jupyterlab ipywidgets papermill nbval playwright
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|trl|bitsandbytes|datasets|accelerate) "
	$(OFFLINE) LABKIT_UNPINNED=1 LABKIT_CHROMIUM=$(CHROMIUM) $(LATEST)/bin/python -m pytest tests -q

doctor: install
	$(OFFLINE) $(VENV)/bin/labkit doctor

bench: install  ## wall time and peak memory of every notebook -> bench/notebooks.md
	$(OFFLINE) $(PY) scripts/bench_notebooks.py

render: install  ## every notebook into out/render with a summary page; e.g. make render ARGS="--fast --html"
	$(OFFLINE) $(VENV)/bin/labkit render --out out/render $(ARGS)

data: install  ## regenerate the course's JSONL datasets (deterministic)
	$(PY) -m labkit.data

pins:  ## rewrite constraints.txt from the current venv
	{ echo "# The exact versions the course is tested with (pip install -c constraints.txt -e '.[test]')."; \
	  echo "# Regenerate with: make pins   (after upgrading deliberately and re-running make test)"; \
	  $(PY) -m pip freeze --exclude-editable | grep -viE "^(labkit|pip|setuptools|wheel)[= ]" | sed 's/+cpu$$//'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
