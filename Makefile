# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := rfc6455 chatd tls
# The docs' own code: the figure generator and the MkDocs hook (files, not the folder:
# ruff would format the Python in the markdown pages too).
DOCS_PY := docs/gen_diagrams.py docs/hooks.py
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest docs docs-check bench bench-quick bench-report bench-frames load autobahn fuzz clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench,docs]'
	@touch $(STAMP)

run: $(STAMP)
	mkdir -p var
	$(PY) -m chatd --host $(HOST) --port $(PORT) --db var/chatd.sqlite3

test: lint typecheck docs-check pytest

lint: $(STAMP)
	$(PY) -m ruff check $(PACKAGES) tests bench $(DOCS_PY)
	$(PY) -m ruff format --check $(PACKAGES) tests bench $(DOCS_PY)

typecheck: $(STAMP)
	$(PY) -m mypy --strict $(PACKAGES) $(DOCS_PY)

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

# The documentation site (mkdocs.yml): the figures drawn from the code's own tables
# (docs/gen_diagrams.py), then a strict build into site/. docs-check, part of make test,
# changes nothing: it fails when a figure is stale or the build has a single warning.
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, not a build warning.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs

docs: $(STAMP)
	$(PY) docs/gen_diagrams.py
	$(MKDOCS) build --strict

docs-check: $(STAMP)
	$(PY) docs/gen_diagrams.py --check
	site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && $(MKDOCS) build --strict --quiet --site-dir "$$site"

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage site
