# mobilenet-edge: train (float, QAT) -> export (.pte bundle) -> edge app / device tests.
# `make help` lists the targets. Variables: MODEL DATA EPOCHS RES WIDTH (see README).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The pipeline's defaults live in its recipe (configs/recipes/default.yaml; finetune.yaml with WEIGHTS=; RECIPE=
# names another); these variables override them when given: MODEL DATA EPOCHS QAT_EPOCHS RES WIDTH, WEIGHTS=
# (imagenet, or a torchvision-format file, to fine-tune) or CKPT= (a float checkpoint to start QAT from),
# RUN= and OUT= (runs/MODEL, artifacts/MODEL), ARGS= (extra LightningCLI arguments, e.g.
# ARGS="--data.batch_size=64"), EXPORT_ARGS= (extra python -m export options).
# MODEL names the default bundle (artifacts/MODEL); without MODEL= it is the default recipe's model.
MODEL ?= $(shell sed -n 's/^model: *\([a-z0-9_]*\).*/\1/p' configs/recipes/default.yaml)

VENV := .venv
PY := $(VENV)/bin/python
# On a Raspberry Pi, picamera2 comes from apt, so the venv must see system packages.
ON_PI := $(shell grep -qs "Raspberry Pi" /proc/device-tree/model && echo 1)
VENV_FLAGS := $(if $(ON_PI),--system-site-packages,)
HOST_EXTRAS := train,export,edge,deploy,dev
PI_EXTRAS := edge,rpi,dev
EXTRAS := $(if $(ON_PI),$(PI_EXTRAS),$(HOST_EXTRAS))
given = $(filter command line environment environment override,$(origin $(1)))
# Every value a user gives reaches its program as one argument, whatever it holds (; $$() ` quotes spaces, a
# leading -): single-quoted, its own single quotes escaped, and as --flag=VALUE. Lists (MODELS, WIDTHS, RES,
# SEEDS) are a word each; ARGS-like strings are split by the program (shlex) or by bash's read, never run.
q = '$(subst ','\'',$(1))'
qs = $(foreach word,$(1),$(call q,$(word)))
qm = $(call q,$(subst $$,$$$$,$(1)))# for a sub-make's command line, which expands a value once more
opt = $(if $(2),$(1)=$(call q,$(2)),)
# Each variable reaches its program as a flag only when given: every default lives in the program or its
# recipe, never here (an empty DATA= is given: the procedural shapes).
PIPELINE_ARGS = $(call opt,--recipe,$(RECIPE)) $(if $(call given,MODEL),--model=$(call q,$(MODEL))) \
	$(if $(call given,DATA),--data=$(call q,$(DATA))) $(call opt,--epochs,$(EPOCHS)) $(call opt,--qat-epochs,$(QAT_EPOCHS)) \
	$(call opt,--res,$(RES)) $(call opt,--width,$(WIDTH)) $(call opt,--ckpt,$(CKPT)) $(call opt,--weights,$(WEIGHTS)) \
	$(call opt,--run,$(RUN)) $(call opt,--out,$(OUT)) $(call opt,--args,$(ARGS)) $(call opt,--export-args,$(EXPORT_ARGS))

# The edge app: BUNDLE to run, SOURCE (empty: a generated video of the procedural shapes; picamera; 0; a file/URL).
BUNDLE ?= artifacts/$(MODEL)
SOURCE ?=
SERVE ?=
WINDOW ?=
DEMO_VIDEO := artifacts/demo.mp4
BENCH_SECONDS ?=
THREADS ?=

# Deploy: DEVICE is a profile in configs/devices/; HOST= (user@host) PORT= KEY= REMOTE_DIR= DEVICE_PYTHON= THREADS=
# override it (SERIAL= picks an Android device when several are attached). NO_TESTS=1 skips the device tests, SERVICE=1 installs a systemd user unit serving its page on
# SERVE= (127.0.0.1:8080: the device only; 0.0.0.0:8080 for the LAN), BWLIMIT= (KB/s).
DEVICE ?= rpi5
SERIAL ?=
HOST ?=
PORT ?=
KEY ?=
REMOTE_DIR ?=
DEVICE_PYTHON ?=
KNOWN_HOSTS ?=
REPORTS ?= artifacts/devices
BWLIMIT ?=
NO_TESTS ?=
SERVICE ?=
# make test: two pytest-xdist workers, a test file each at a time; the longest file (it trains and exports the
# QAT model) goes first, so the other worker runs the rest meanwhile. WORKERS=0 runs them in one process.
WORKERS ?= 2
# The end-to-end suites (markers arm, sweep, android) have their own targets; every host run leaves them out.
HOST_TESTS := not arm and not sweep and not android
PYTEST_WORKERS = $(if $(filter 0,$(WORKERS)),,-n $(call q,$(WORKERS)) --dist loadfile tests/test_qat_export.py tests)
DEVICE_ARGS := $(call opt,--serial,$(SERIAL)) $(call opt,--host,$(HOST)) $(call opt,--port,$(PORT)) $(call opt,--key,$(KEY)) \
	$(call opt,--remote-dir,$(REMOTE_DIR)) $(call opt,--python,$(DEVICE_PYTHON)) $(call opt,--threads,$(THREADS)) \
	$(call opt,--known-hosts,$(KNOWN_HOSTS))
DEPLOY_ARGS := $(DEVICE_ARGS) --reports=$(call q,$(REPORTS)) $(call opt,--bwlimit,$(BWLIMIT)) $(if $(NO_TESTS),--no-tests,) \
	$(if $(SERVICE),--service $(call opt,--serve,$(SERVE)),)

# make sweep: every MODELS x WIDTHS x RES point built by the pipeline with the sweep recipe (configs/recipes/sweep.yaml
# holds the grid; EPOCHS, QAT_EPOCHS, DATA, RES, WEIGHTS, ARGS override it as in make qat) and timed on DEVICE (here:
# local unless given; rpi5 with HOST=...). BUDGET_MS= copies the best bundle within it (p90) to artifacts/sweep/best;
# JOBS= points built at once.
MODELS ?=
WIDTHS ?=
BUDGET_MS ?=
JOBS ?=
SWEEP_DEVICE := $(if $(call given,DEVICE),$(DEVICE),local)

.PHONY: help setup bundle train qat export collect lint test test-sweep test-repeat test-fast test-deps demo bench-edge deploy device-report sweep bench-train bench-qat bench-sweep bench-peers bench-peers-profile clean \
	pi-emu pi-emu-down test-arm android-runner android-emu android-emu-down test-android

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@echo "== setup: $(VENV) with the project and its extras [$(EXTRAS)] (the first time: a few minutes, about 2 GB)" >&2
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[$(EXTRAS)]"
	$(if $(ON_PI),$(VENV)/bin/pip install -q --no-deps "$$($(PY) -m deploy.pins)")
	touch $@

setup: $(VENV)/.installed  ## create .venv, install the project with its extras, build the native runner
	@$(PY) -m edge.native >/dev/null

train: setup  ## float training only: make train MODEL=v3_small DATA=<dir|cifar10> EPOCHS= RES= WIDTH=
	$(PY) -m pipeline --float-only $(PIPELINE_ARGS)

qat: setup  ## float training (fine-tuning with WEIGHTS=imagenet|FILE; none with CKPT=), QAT, export, verify, compare
	$(PY) -m pipeline $(PIPELINE_ARGS)

export: setup  ## export a checkpoint: make export CKPT=runs/v3_small/checkpoints/best.ckpt [PRECISION=int8|fp32] [OUT=] [EXPORT_ARGS=]
	$(if $(CKPT),,$(error give the checkpoint to export: make export CKPT=path/to/best.ckpt))
	read -r -a extra <<< $(call q,$(EXPORT_ARGS)); \
	$(PY) -m export $(call q,$(CKPT)) $(call opt,--precision,$(PRECISION)) $(call opt,--out,$(OUT)) "$${extra[@]}"

lint: setup  ## ruff (checks and format) over the tree, mypy over edge/ (the code that ships to devices)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy edge/

test: setup test-deps  ## host tests (browser and SSH tests need test-deps); the emulated Pi: make test-arm
	$(PY) -m pytest -q -m $(call q,$(HOST_TESTS)) $(PYTEST_WORKERS)

test-sweep: setup test-deps  ## make sweep end to end on a tiny grid (CI runs it after make test)
	$(PY) -m pytest -q -m sweep tests/test_sweep.py

N ?= 3
test-repeat: setup test-deps  ## the tests on trained fixtures, threads or time, N=3 times with fresh fixtures: flakes show here first
	$(if $(shell [[ $(call q,$(N)) =~ ^[1-9][0-9]*$$ ]] && echo ok),,$(error N=$(N): give the number of repeats, a whole number of 1 or more))
	@for i in $$(seq $(N)); do echo "== make test-repeat: run $$i of $(N)" >&2; \
		$(PY) -m pytest -q -p no:cacheprovider -m $(call q,repeat and $(HOST_TESTS)) $(PYTEST_WORKERS) || exit 1; done

test-fast: setup  ## the host tests that need no trained model (make test runs all)
	$(PY) -m pytest -q -m $(call q,not slow and $(HOST_TESTS)) $(PYTEST_WORKERS)

test-deps:  ## Debian packages some tests use (chromium, chromedriver, sshd, rsync): installed when root
	@.ci/debian-test-deps

# The bundle the app's targets use, checked in the shell (a user's path is never a make target, whose ; or :
# make would read as syntax): built here when it is the default one; a Pi gets its bundle from make deploy.
bundle: | setup
	@test -f $(call q,$(BUNDLE))/model.json || \
	$(if $(and $(filter artifacts/$(MODEL),$(BUNDLE)),$(if $(ON_PI),,1)),$(MAKE) qat MODEL=$(call qm,$(MODEL)),\
	{ printf 'error: no bundle at %s: build one with make qat (or make deploy to a Pi)\n' $(call q,$(BUNDLE)) >&2; exit 1; })

$(DEMO_VIDEO): | setup
	$(PY) -m training.demo_video $@ --seconds 30

demo: setup bundle $(if $(SOURCE),,$(DEMO_VIDEO))  ## live demo, its page on SERVE= (this machine only unless given; WINDOW=1: a window too)
	@$(MAKE) -s -f deploy/device.mk demo PY=$(PY) BUNDLE=$(call qm,$(BUNDLE)) SOURCE=$(call qm,$(or $(SOURCE),$(DEMO_VIDEO))) \
		LOOP=$(if $(SOURCE),,1) $(if $(SERVE),SERVE=$(call qm,$(SERVE))) THREADS=$(call qm,$(THREADS)) WINDOW=$(call qm,$(WINDOW)) \
		ARGS=$(call qm,$(ARGS))

bench-edge: setup bundle $(DEMO_VIDEO)  ## pipeline vs inference-only frames/s, latency, RSS (BENCH_SECONDS= the run's length)
	$(PY) -m edge.bench $(call q,$(BUNDLE)) --source=$(call q,$(or $(SOURCE),$(DEMO_VIDEO))) $(call opt,--seconds,$(BENCH_SECONDS)) \
		$(call opt,--threads,$(THREADS)) --json=$(call q,runs/bench/edge-$(notdir $(BUNDLE)).json)

deploy: setup bundle  ## ship bundle + app + device tests to DEVICE=rpi5|rpi5-emu|android|android-emu|local|local-ssh, run the tests there
	$(PY) -m deploy $(call q,$(DEVICE)) --bundle=$(call q,$(BUNDLE)) $(DEPLOY_ARGS)

android-runner: setup  ## the native runner cross-compiled for aarch64 with its C library (cached; what DEVICE=android runs)
	$(PY) -m deploy.environment.runner_package

android-emu: setup  ## start an emulated Android phone: aarch64 root with no C library, adbd for the real adb (as root)
	PYTHON=$(abspath $(PY)) emulators/android.sh up

android-emu-down:  ## stop the emulated phone: adb disconnect, adbd, its mounts, its binfmt entry
	emulators/android.sh down

test-android: setup test-deps  ## the emulated phone up, make deploy DEVICE=android-emu of a QAT bundle, bad inputs, down (as root)
	$(PY) -m pytest -q -s -m android tests/test_android.py

pi-emu:  ## start an emulated Raspberry Pi 5 (arm64 under qemu, as root; builds its root once)
	emulators/pi.sh up

pi-emu-down:  ## stop the emulated Pi: sshd, its mounts, its binfmt entry
	emulators/pi.sh down

test-arm: setup test-deps  ## on ARM: emulated Pi up, deploy + device tests there, an interrupted deploy, down (as root)
	$(PY) -m pytest -q -s -m arm tests/test_arm.py

# make collect: training images from the device's camera (a page, or LABEL= COUNT= EVERY= headless), added to DATA
# (default data/collected); the page is forwarded over SSH to http://127.0.0.1:8080/ here, SERVE=0.0.0.0:8080 for the LAN.
collect: setup  ## training images from a deployed device's camera, brought home: make collect DEVICE=rpi5 HOST=... CLASSES=cat,dog
	$(if $(CLASSES),,$(error give the classes: make collect DEVICE=$(DEVICE) CLASSES=cat,dog,nothing))
	$(PY) -m deploy.collect $(call q,$(DEVICE)) --classes=$(call q,$(CLASSES)) --into=$(call q,$(or $(DATA),data/collected)) \
		$(call opt,--host,$(HOST)) $(call opt,--port,$(PORT)) $(call opt,--key,$(KEY)) $(call opt,--known-hosts,$(KNOWN_HOSTS)) \
		$(call opt,--remote-dir,$(REMOTE_DIR)) $(call opt,--source,$(SOURCE)) $(if $(call given,SERVE),--serve=$(call q,$(SERVE))) \
		$(call opt,--local-port,$(LOCAL_PORT)) $(call opt,--label,$(LABEL)) $(call opt,--count,$(COUNT)) $(call opt,--every,$(EVERY))

device-report: setup  ## compare two device reports: make device-report A=path/device_report.json B=...
	$(if $(and $(A),$(B)),,$(error give two reports: make device-report A=... B=... (under artifacts/devices/)))
	$(PY) -m device_tests.compare $(call q,$(A)) $(call q,$(B))

sweep: setup  ## accuracy/MACs/size/latency over MODELS x WIDTHS x RES, Pareto plots, BUDGET_MS= pick (README)
	$(PY) -m sweep $(if $(MODELS),--models $(call qs,$(MODELS))) $(if $(WIDTHS),--widths $(call qs,$(WIDTHS))) $(if $(RES),--res $(call qs,$(RES))) \
		$(if $(call given,DATA),--data=$(call q,$(DATA))) $(call opt,--epochs,$(EPOCHS)) $(call opt,--qat-epochs,$(QAT_EPOCHS)) \
		$(call opt,--weights,$(WEIGHTS)) $(call opt,--args,$(ARGS)) --device=$(call q,$(SWEEP_DEVICE)) \
		--deploy-args=$(call q,$(strip $(DEVICE_ARGS))) $(call opt,--budget-ms,$(BUDGET_MS)) $(call opt,--jobs,$(JOBS)) \
		$(call opt,--export-args,$(EXPORT_ARGS))

bench-train: setup  ## training throughput (images/s) per model at 64/128/224 px
	$(PY) -m training.bench

# The benchmarks' recipes take CIFAR-10 from its official archive; DATA= a folder per class (CIFAR-10 as JPEGs)
# is used instead when given.
SEEDS ?=
bench-qat: setup  ## the bench-qat recipe once per seed (its seeds, or SEEDS=; long: docs/benchmarks.md has its times)
	$(foreach seed,$(or $(SEEDS),$(shell $(PY) -m pipeline.recipe bench-qat seeds)),$(PY) -m pipeline --recipe bench-qat $(call opt,--data,$(DATA)) --seed=$(call q,$(seed)) \
		--run=$(call q,runs/bench-qat/seed$(seed)) --out=$(call q,artifacts/bench-qat-v3_small-seed$(seed)) $(call opt,--args,$(ARGS)) &&) true

bench-sweep: setup  ## make sweep over the bench-sweep recipe's grid (V3-Small/Large x α x ρ on CIFAR-10; hours)
	$(PY) -m sweep --recipe bench-sweep $(call opt,--data,$(DATA)) $(call opt,--args,$(ARGS)) --device=$(call q,$(SWEEP_DEVICE)) \
		--deploy-args=$(call q,$(strip $(DEVICE_ARGS))) --out artifacts/bench-sweep --runs runs/bench-sweep \
		$(call opt,--budget-ms,$(BUDGET_MS)) $(call opt,--jobs,$(JOBS))

# make bench-peers: our programs against LiteRT, ONNX Runtime and ncnn on the same weights (python -m peers), in
# its own environment (.venv-peers: the converters pull in jax and transformers, about 3 GB). Two tables: seeded
# weights at MODEL= WIDTH= RES= (1000 classes; python -m peers --help gives the defaults) in artifacts/peers/, and
# the trained model make qat ships (its float checkpoint, runs/MODEL/checkpoints/best.ckpt, or CKPT=) when there
# is one, in artifacts/peers-trained/. DATA= a folder of images to check and calibrate on (default: the
# procedural shapes). THREADS=; ALONE=1 times each program in a process of its own. It also measures
# on DEVICE= when given, and on the emulated Pi when that is up (make pi-emu).
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_DEVICE = $(if $(call given,DEVICE),$(DEVICE),$(shell emulators/pi.sh status >/dev/null 2>&1 && echo rpi5-emu))
PEERS_ARGS = $(call opt,--data,$(DATA)) $(call opt,--threads,$(THREADS)) $(if $(ALONE),--alone) \
	$(call opt,--device,$(PEERS_DEVICE)) $(call opt,--host,$(HOST))
PEERS_SEEDED = $(if $(call given,MODEL),--model=$(call q,$(MODEL))) $(call opt,--width,$(WIDTH)) $(call opt,--res,$(RES))
PEERS_TRAINED = $(or $(CKPT),$(wildcard runs/$(MODEL)/checkpoints/best.ckpt))

$(PEERS_VENV)/.installed: pyproject.toml
	@echo "== bench-peers: $(PEERS_VENV) with the converters and the peer runtimes (the first time: a few minutes, about 3 GB)" >&2
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -e ".[peers]"
	touch $@

bench-peers: $(PEERS_VENV)/.installed  ## ours vs LiteRT, ONNX Runtime, ncnn on the same weights: one table (and the emulated Pi's ratios when it is up)
	@$(PEERS_PY) -m edge.native >/dev/null
	$(PEERS_PY) -m peers $(PEERS_SEEDED) $(PEERS_ARGS)
	$(if $(PEERS_TRAINED),$(PEERS_PY) -m peers --checkpoint=$(call q,$(PEERS_TRAINED)) --out=artifacts/peers-trained $(PEERS_ARGS))

bench-peers-profile: $(PEERS_VENV)/.installed  ## where the time goes after make bench-peers: ours per operator (ETDump), LiteRT per microkernel (perf)
	@command -v perf >/dev/null || { [ "$$(id -u)" -eq 0 ] && apt-get install -y -q linux-perf >/dev/null; } || \
		{ echo "error: perf is missing: sudo apt install linux-perf" >&2; exit 1; }
	$(PEERS_PY) -m peers.profile artifacts/peers $(call opt,--threads,$(THREADS))

clean:  ## remove runs and artifacts (keeps .venv)
	rm -rf runs artifacts
