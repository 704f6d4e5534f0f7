# `make train` and `make test` each create .venv when it is missing and
# (re)install the package into it whenever setup.cfg changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: train test test-fast coverage lint format install docs bench-peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.cfg setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.cfg setup.py | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

# transformers v5 (PyTorch only) in a folder of its own beside the venv: the export
# tests load tfclm's PyTorch export with it, in a process that puts it first on sys.path.
$(VENV)/transformers-v5/.installed: | $(PY)
	$(PY) -m pip install --quiet --target $(VENV)/transformers-v5 'transformers>=5,<6'
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-docs: setup.cfg setup.py | $(PY)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

# The documentation site, from docs/ into site/; --strict fails on a broken link or a page left out of the nav.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# bench/peers/run.py: tfclm against PyTorch transformers and KerasHub (JAX), each peer in a venv of its own.
$(VENV)/peers/pytorch/.installed:
	$(PYTHON) -m venv $(VENV)/peers/pytorch
	$(VENV)/peers/pytorch/bin/pip install --quiet 'torch==2.13.0' 'transformers>=5,<6' numpy
	touch $@

$(VENV)/peers/kerashub/.installed:
	$(PYTHON) -m venv $(VENV)/peers/kerashub
	$(VENV)/peers/kerashub/bin/pip install --quiet 'keras-hub>=0.32,<1' 'keras>=3.10,<4' 'jax[cpu]>=0.7,<1' numpy
	touch $@

bench-peers: $(VENV)/.installed $(VENV)/peers/pytorch/.installed $(VENV)/peers/kerashub/.installed
	$(PY) bench/peers/run.py

train: $(VENV)/.installed
	$(PY) -m tfclm fit --config $(CONFIG)

# The whole suite (what CI runs); test-fast leaves out the tests marked slow
# (whole fits, subprocesses, XLA compiles).
# Two workers (pytest-xdist): the slow tests mostly wait on TensorFlow start-up and subprocesses.
test: $(VENV)/.installed-test $(VENV)/transformers-v5/.installed
	$(PY) -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The whole suite under coverage: the share of tfclm/ that the tests run in their own processes (the
# subprocesses they start are not counted); about a third slower than `make test`.
coverage: $(VENV)/.installed-test $(VENV)/transformers-v5/.installed
	$(PY) -m pytest -n 2 --dist worksteal --cov=tfclm --cov-report=term $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check tfclm tests bench
	$(VENV)/bin/ruff format --check tfclm tests bench

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix tfclm tests bench
	$(VENV)/bin/ruff format tfclm tests bench

clean:
	rm -rf $(VENV) runs build site *.egg-info
