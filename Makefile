# The two commands: `make demo` and `make test`. Both set everything up themselves
# (Debian packages when run as root, the venv, the seven fedfhe packages: PKGS).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedfhe-installed
PKGS := common proto server client inference testbed demo
DEMO_ARGS = $(if $(DATASET),--dataset $(DATASET)) $(if $(OWNERS),--owners $(OWNERS)) \
            $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(MODEL),--model $(MODEL)) \
            $(if $(SPLIT),--split $(SPLIT)) $(if $(WORK_DIR),--work-dir $(WORK_DIR))

.PHONY: demo test test-fast install sysdeps lint proto clean

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): $(foreach p,$(PKGS),$(p)/pyproject.toml) requirements-dev.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# concrete-ml 1.9.0 pins torch 2.3.1 (a ~5 GB CUDA wheel from PyPI); it installs once per venv.
	$(BIN)/pip install -q $(foreach p,$(PKGS),-e ./$(p)) -e './common[parquet]' -r requirements-dev.txt
	# A console script that moved between our packages (fedfhe-partition: fedfhe-demo -> fedfhe-testbed) is
	# written by the new owner, then deleted when pip uninstalls the old one's editable install: put it back.
	@test -x $(BIN)/fedfhe-partition || $(BIN)/pip install -q --no-deps --force-reinstall -e ./testbed
	@touch $@

install: sysdeps $(STAMP)

demo: install
	$(BIN)/python -m fedfhe_demo $(DEMO_ARGS)

# Two workers, one test file each at a time (module fixtures stay in one process): on CI's 2 cores the
# multihost deployment (collected first, tests/conftest.py; --no-loadscope-reorder keeps that order instead
# of xdist's largest-file-first) runs beside the loopback and unit files.
# TEST_WORKERS=0 runs everything in this process, in file order. PYTEST_ARGS='-m "not slow"' leaves out the
# files measured over a minute (the `slow` marks, tests/conftest.py).
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

# The unit tests only (876 tests in 110 s with -n 2 on a 2-core machine, 2026-12-07; keep it under 3 min):
# no SuperLink, no netns hosts, no Concrete compile beyond a few small circuits. For the edit-test loop;
# `make test` is what CI runs.
test-fast: install
	$(BIN)/python -m pytest tests/unit $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

proto: install
	$(BIN)/python -m fedfhe_proto.generate

clean:
	rm -rf $(VENV)
