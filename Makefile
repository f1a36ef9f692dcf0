# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := rfc6455 chatd tls
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest bench bench-quick bench-report bench-frames load autobahn fuzz clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(PY) -m chatd --host $(HOST) --port $(PORT) --db var/chatd.sqlite3

test: lint typecheck pytest

lint: $(STAMP)
	$(PY) -m ruff check $(PACKAGES) tests bench
	$(PY) -m ruff format --check $(PACKAGES) tests bench

typecheck: $(STAMP)
	$(PY) -m mypy --strict $(PACKAGES)

# The sans-I/O core must keep at least 95% branch coverage; the report shows every module.
CORE := codes errors frames events connection handshake http deflate
comma := ,
empty :=
space := $(empty) $(empty)
CORE_FILES := $(subst $(space),$(comma),$(foreach m,$(CORE),rfc6455/$(m).py))

pytest: $(STAMP)
	$(PY) -m pytest --cov=rfc6455 --cov=tls --cov=chatd --cov-branch \
		--cov-report=term-missing:skip-covered tests
	@echo "== branch coverage of the rfc6455 core (at least 95%)"
	$(PY) -m coverage report --include='$(CORE_FILES)' --fail-under=95

# Every benchmark, ours beside the peers, interleaved round by round: one JSON file in
# bench/results/ (about 30 minutes; bench-quick: a 2-minute subset). bench-report turns
# the newest file into docs/benchmarks.md and its charts.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench --quick $(BENCH_ARGS)

bench-report: $(STAMP)
	$(PY) -m bench.report $(REPORT_ARGS)

# The frame cases through pytest-benchmark instead of bench's own timer.
bench-frames: $(STAMP)
	$(PY) -m pytest bench/test_frames.py --benchmark-only --benchmark-columns=min,median,ops \
		--benchmark-sort=name $(BENCH_ARGS)

load: $(STAMP)
	$(PY) -m bench.load compare $(LOAD_ARGS)

autobahn: $(STAMP)
	bash bench/autobahn.sh

# The network fuzzer on a long run (make test runs 2,000 cases): FUZZ_CASES cases against a
# fresh chatd, seed FUZZ_SEED (a random one, printed, when empty). A failure prints the seed,
# the case and its bytes, and the --replay command that reproduces it.
FUZZ_CASES ?= 50000
FUZZ_SEED ?=
fuzz: $(STAMP)
	$(PY) -m tests.fuzz_chatd --cases $(FUZZ_CASES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED)) $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
