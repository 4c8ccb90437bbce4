# Everything a fresh clone needs, from the lock file. Only Python 3.11 must exist on the machine.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
PYTHON ?= python3.11
UV_VERSION := 0.13.9
# Prefer an installed uv; otherwise bootstrap a private one into .tools (from PyPI, pinned).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := $(CURDIR)/.venv
export ETL_OBSERVER_HOME ?= $(CURDIR)/.etl_observer

.PHONY: bootstrap demo demo-aws test dev bench clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

# checkov pins an old boto3, so it lives in its own pinned environment, not in the project's lock.
SCAN_VENV := $(CURDIR)/.tools/scan
$(SCAN_VENV)/.installed: infra_scripts/requirements-scan.txt | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(SCAN_VENV)
	$(UV) pip install --quiet --python $(SCAN_VENV)/bin/python -r infra_scripts/requirements-scan.txt
	touch $@

bootstrap: $(VENV)/.synced $(SCAN_VENV)/.installed

demo: $(VENV)/.synced  ## run the main job on the bundled sample; JSON summary on stdout
	$(VENV)/bin/etl-observer run --dataset employees --batch-id demo-employees samples/employees.csv

test: bootstrap  ## the whole suite
	CHECKOV=$(SCAN_VENV)/bin/checkov $(VENV)/bin/pytest $(PYTEST_ARGS)

dev: $(VENV)/.synced  ## dagster dev with the landing sensor running; drop CSVs into $ETL_OBSERVER_HOME/landing/<dataset>/
	$(VENV)/bin/etl-observer dev

demo-aws: $(VENV)/.synced  ## SIMULATION of AWS (moto): executions auto-tracked by dagster dev in aws mode
	ETL_OBSERVER_HOME=$(CURDIR)/.etl_observer_aws $(VENV)/bin/python -m infra_scripts.demo_aws

bench: $(VENV)/.synced  ## converter speed and memory against the alternatives, one run
	$(VENV)/bin/python -m tests.bench.bench_convert

clean:
	rm -rf $(VENV) .tools .etl_observer
