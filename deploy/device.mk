# The device side of a deployed release (shipped as its Makefile). From the release directory:
#   make demo [SOURCE=picamera|0|file.mp4] [SERVE=0.0.0.0:8080]   live classification, page on SERVE (edge run's
#                                                                   own address unless given: the device only)
#             [WINDOW=1]                                            also a window (needs an OpenCV with GUI)
#   make test                                                       the device tests, report in device_report.*
# The host's `make demo` and the systemd unit of `make deploy SERVICE=1` run this demo target too: one demo command.
# THREADS: the count the deploy's device tests chose by measurement (threads.json), else the profile's.
SHELL := /bin/bash
PY ?= $(shell cat python)
BUNDLE ?= bundle
FACT = $(shell $(PY) -c "import json; print(json.load(open('device.json'))['$(1)'] or '')")
SOURCE ?= $(or $(call FACT,camera),procedural)
THREADS ?= $(or $(shell $(PY) -m edge.threads),$(call FACT,threads))# chosen by the device tests, else the profile's
SERVE ?=
WINDOW ?=
ARGS ?=
LOOP ?=
# A value as one shell word, whatever it holds; ARGS (extra edge run options) split on spaces by bash, never run.
q = '$(subst ','\'',$(1))'

.PHONY: demo test
demo:
	read -r -a extra <<< $(call q,$(ARGS)); \
	$(PY) -m edge run $(call q,$(BUNDLE)) --source=$(call q,$(SOURCE)) $(if $(LOOP),--loop) $(if $(SERVE),--serve=$(call q,$(SERVE)),--serve) \
		$(if $(THREADS),--threads=$(call q,$(THREADS))) $(if $(WINDOW),,--headless) "$${extra[@]}"

test:
	$(PY) -m pytest -c device_tests/pytest.ini device_tests -q --report device_report.json
