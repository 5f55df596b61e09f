# The two commands a newcomer needs:
#   make demo   set up a fresh machine (.venv, CPU torch 2.13.0, everything else) and run the
#               main job: both services on 127.0.0.1 with the tiny profile, a Kodak image
#               encoded and decoded through them with curl
#   make test   run the test suite (sets up first if needed)
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1

.PHONY: setup test demo serve bench lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	VENV=$(VENV) bash scripts/demo.sh

serve: setup
	VENV=$(VENV) bash scripts/serve.sh

lint: setup
	$(VENV)/bin/ruff check services encoder_service decoder_service ray_service bench tests
	$(VENV)/bin/bandit -q -c pyproject.toml -r services encoder_service decoder_service ray_service
	$(VENV)/bin/lint-imports
