# Every target sets up what it needs: a .venv made here, installed once, reused after
# (re-installed when a requirements file or the package's build files change). tfrnn itself
# is installed into it in editable mode, so `import tfrnn` works from any folder and
# `.venv/bin/python -m tfrnn.…` runs the checkout's code; and a tfrnn model loads with Keras
# alone (setup.py, tfrnn/saving.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test lint echo-deps echo-styles record-echo mnist bench tutorials

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --quiet --no-deps -e .
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n 2

# Echo dependencies: the tutorial's (5, 4) and (10, 16); table, summary.json and summary.png
# in runs/echo_deps/canonical/.
echo-deps: $(VENV)/.installed
	$(PY) -m tfrnn.experiments.echo_deps --suite canonical

# TF-style n and 2n against true truncated BPTT n; table and plots in runs/echo_deps/styles/.
echo-styles: $(VENV)/.installed
	$(PY) -m tfrnn.experiments.echo_deps --suite styles

# Refreshes the recorded results in experiments/echo_deps/ (tracked files): both suites again,
# the canonical summary copied there and the styles' table and plots written there.
record-echo: echo-deps
	cp runs/echo_deps/canonical/summary.json runs/echo_deps/canonical/summary.png experiments/echo_deps/
	$(PY) -m tfrnn.experiments.echo_deps --suite styles --styles_dir experiments/echo_deps

# MNIST row by row, 11 epochs: MNIST from tensorflow-datasets, or the four MNIST IDX files of
# MNIST_DATA, a folder beside the checkout, used only if it exists.
# More flags: make mnist MNIST_FLAGS="--preset C1 --workdir runs/c1".
MNIST_DATA := $(wildcard ../shared/datasets/mnist)
# A preset in MNIST_FLAGS sets the run's length itself, so --epochs 11 goes only without one.
mnist: $(VENV)/.installed
	$(PY) -m tfrnn.experiments.mnist $(if $(findstring --preset,$(MNIST_FLAGS)),,--epochs 11) $(if $(MNIST_DATA),--data_dir $(MNIST_DATA)) $(MNIST_FLAGS)

# Training and serving speed, side by side with PyTorch when TORCH_PYTHON names a Python with
# torch, and with the tutorials' TF1 programs when TF1_PYTHON names one with tensorflow and
# tf_keras (else those columns are skipped); table + runs/bench/results.json. The presets train
# on MNIST_DATA's IDX files when that folder exists, else on a synthetic set of MNIST's size.
# BENCH_FLAGS="--rounds 5".
bench: $(VENV)/.installed
	$(PY) -m tfrnn.bench $(if $(MNIST_DATA),--mnist_dir $(MNIST_DATA)) $(BENCH_FLAGS)

# The tutorials' notebooks run in full, their outputs rewritten in place (about 20 minutes on
# 2 CPU cores); `make test` runs them in quick mode (tests/test_tutorials.py).
tutorials: $(VENV)/.installed
	$(if $(MNIST_DATA),TFRNN_MNIST_DIR=$(abspath $(MNIST_DATA))) $(VENV)/bin/jupyter nbconvert \
	  --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 \
	  --ExecutePreprocessor.kernel_name=python3 tutorials/*.ipynb
