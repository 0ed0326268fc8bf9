# Two commands matter: `make demo` (the main job end to end on local services) and
# `make test` (the whole suite against real local servers). Both install what they need.
PYTHON ?= python3
export OPENIM_MIGRATE_BIN ?= $(HOME)/.cache/openim-migrate/bin

.PHONY: deps test demo bench lint types clean

deps:
	bash scripts/install-deps.sh
	bash scripts/build-k8s.sh
	bash scripts/build-documentdb.sh
	bash scripts/build-mongo-tools.sh
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[test]'

test: deps lint types
	OIM_REQUIRE_SERVICES=1 $(PYTHON) -m pytest

demo: deps
	$(PYTHON) scripts/demo.py

bench: deps
	$(PYTHON) bench/run_all.py

lint:
	$(PYTHON) -m ruff check migrator tests fixtures bench scripts

types:
	$(PYTHON) -m mypy

clean:
	rm -rf .services build *.egg-info plans/demo*.yaml plans/*.journal.*
