# The course's two commands: `make lab` (set up and open JupyterLab) and `make test` (set up and test).
# Everything lands in .venv; nothing is installed globally.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.labkit-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
           HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
PORT   ?= 8888

.PHONY: install lab test test-fast test-offline doctor bench pins data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lab: install  ## open the course in JupyterLab
	$(OFFLINE) $(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root,)

test: install  ## the whole suite: unit tests, every notebook with nbval and with papermill
	$(OFFLINE) $(PY) -m pytest tests notebooks --nbval-lax -q

test-fast: install  ## unit tests only, no notebooks
	$(OFFLINE) $(PY) -m pytest tests -q -m "not slow"

test-offline: install  ## the suite with the network cut off (needs root: unshare -n)
	unshare -n sh -c 'ip link set lo up 2>/dev/null; $(OFFLINE) $(PY) -m pytest tests notebooks --nbval-lax -q'

doctor: install
	$(OFFLINE) $(VENV)/bin/labkit doctor

bench: install  ## wall time and peak memory of every notebook -> bench/notebooks.md
	$(OFFLINE) $(PY) scripts/bench_notebooks.py

data: install  ## regenerate the course's JSONL datasets (deterministic)
	$(PY) -m labkit.data

pins:  ## rewrite constraints.txt from the current venv
	{ echo "# The exact versions the course is tested with (pip install -c constraints.txt -e '.[test]')."; \
	  echo "# Regenerate with: make pins   (after upgrading deliberately and re-running make test)"; \
	  $(PY) -m pip freeze --exclude-editable | grep -viE "^(labkit|pip|setuptools|wheel)[= ]" | sed 's/+cpu$$//'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
