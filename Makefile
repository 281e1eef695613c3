# mobilenet-edge: train (float, QAT) -> export (.pte bundle) -> edge app / device tests.
# `make help` lists the targets. Variables: MODEL DATA EPOCHS RES WIDTH (see README).
SHELL := /bin/bash
.DEFAULT_GOAL := help

MODEL ?= v3_small
DATA ?=
EPOCHS ?= 10
RES ?= 96
WIDTH ?= 1.0
RUN ?= runs/$(MODEL)

VENV := .venv
PY := $(VENV)/bin/python
# On a Raspberry Pi, picamera2 comes from apt, so the venv must see system packages.
ON_PI := $(shell grep -qs "Raspberry Pi" /proc/device-tree/model && echo 1)
VENV_FLAGS := $(if $(ON_PI),--system-site-packages,)
EXTRAS := $(if $(ON_PI),edge,rpi,train,export,edge,dev)
# DATA empty: built-in procedural shapes; DATA=cifar10: the official archive; else an ImageFolder dir.
DATA_CONFIG := configs/data/$(if $(DATA),$(if $(filter cifar10,$(DATA)),cifar10,folder),procedural).yaml
DATA_ARGS := --config $(DATA_CONFIG) $(if $(DATA),--data.source=$(DATA),)
FIT_ARGS := --config configs/train.yaml --config configs/model/$(MODEL).yaml $(DATA_ARGS) \
	--trainer.max_epochs=$(EPOCHS) --data.resolution=$(RES) --model.init_args.width_mult=$(WIDTH) \
	--trainer.logger.init_args.save_dir=$(RUN) --checkpoint.dirpath=$(RUN)/checkpoints

.PHONY: help setup train qat test bench-train clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install the project with its extras

train: setup  ## float training: make train MODEL=v3_small DATA=<dir|cifar10> EPOCHS=10 RES=96 WIDTH=1.0
	$(PY) -m training fit $(FIT_ARGS)

qat: train  ## float training then QAT, export and verify (QAT stage: see issue 3)

test: setup  ## host tests
	$(PY) -m pytest -q

bench-train: setup  ## training throughput (images/s) per model at 64/128/224 px
	$(PY) -m training.bench

clean:  ## remove runs and artifacts (keeps .venv)
	rm -rf runs artifacts
