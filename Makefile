# The two commands a fresh clone needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := rfc6455 chatd tls
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest bench autobahn clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m rfc6455.echo --host $(HOST) --port $(PORT)

test: lint typecheck pytest

lint: $(STAMP)
	$(PY) -m ruff check $(PACKAGES) tests bench
	$(PY) -m ruff format --check $(PACKAGES) tests bench

typecheck: $(STAMP)
	$(PY) -m mypy --strict $(PACKAGES)

pytest: $(STAMP)
	$(PY) -m pytest --cov=rfc6455 --cov-branch --cov-report=term-missing:skip-covered \
		--cov-fail-under=60 tests

bench: $(STAMP)
	$(PY) -m pytest bench/test_frames.py --benchmark-only --benchmark-columns=min,median,ops \
		--benchmark-sort=name $(BENCH_ARGS)

autobahn: $(STAMP)
	../shared/autobahn/setup.sh
	bash bench/autobahn.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage
