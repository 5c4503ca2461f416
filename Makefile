# Two commands on a fresh machine:  make study  (runs the default study)  and  make test.
# Both create .venv if missing and install the project into it first.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= tiny
ARGS    ?=
SERVERS_DIR ?= runs/servers

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export TOKENIZERS_PARALLELISM=false

SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser study test lint format clean servers servers-stop serve

# PINS=<report folder>: the package versions that report ran with, from its environment.json (flows/pins.py runs on
# the bare venv's Python), as constraints of the one install; without PINS the install runs only when pyproject.toml
# changed.
CONSTRAINTS := $(if $(strip $(PINS)),-c $(VENV)/pins.txt)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(CONSTRAINTS),$(PY) -m flows.pins $(PINS) > $(VENV)/pins.txt)
	$(PY) -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $@

ifneq ($(strip $(PINS)),)
.PHONY: $(VENV)/.installed
endif

install: $(VENV)/.installed

# Headless Chromium from Debian's packages: the browser test and the README's screenshots (deployments/browser.py).
browser:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

study: install
	$(PY) -m flows.study --profile $(PROFILE) $(ARGS)

# Prefect (http://127.0.0.1:4200) and MLflow (http://127.0.0.1:5000) servers, data under SERVERS_DIR.
servers: install
	$(PY) -m deployments.servers start --dir $(SERVERS_DIR)

servers-stop:
	$(PY) -m deployments.servers stop --dir $(SERVERS_DIR)

# Serve the study and stage flows as deployments on the servers above (UI triggers, cron from the profile).
serve: install
	PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \
	$(PY) -m deployments.serve --profile $(PROFILE) $(ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
test: lint browser
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest ran no test" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf runs .pytest_cache .ruff_cache
