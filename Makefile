# wav2lip-hq: set-up, weights, run, tests. Everything lives in .venv at the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out.mp4
ARGS   ?=

# torch + torchvision pair that imports cleanly (measured; see ../shared/spec/environment.md)
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup models run test bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	# basicsr 1.4.2 is an sdist whose isolated build would download a second torch: build it
	# against the torch just installed
	$(BIN)/pip install -q --no-build-isolation basicsr==1.4.2
	$(BIN)/pip install -q -e '.[test]'
	touch $@

models: setup
	$(BIN)/wav2lip-hq models fetch

run: setup models
	@test -n "$(AUDIO)" -a -n "$(VIDEO)" || { echo "usage: make run AUDIO=speech.wav VIDEO=talk.mp4 [OUT=out.mp4] [ARGS='--upscale 2']"; exit 2; }
	$(BIN)/wav2lip-hq run --audio "$(AUDIO)" --video "$(VIDEO)" -o "$(OUT)" $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# the six performance benchmarks (bench/run.py), one table; PROFILE=quick|standard|full, JSON=results.json
PROFILE ?= standard
bench: setup
	$(BIN)/python -m bench.run --profile $(PROFILE) $(if $(JSON),--json $(JSON)) $(ARGS)

clean-venv:
	rm -rf $(VENV)
