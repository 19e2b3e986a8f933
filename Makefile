# SF: `make run` runs the whole platform, `make test` runs the test suite.
# Both install what is missing first (system packages, virtualenv) and start the services.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install bench lint clean-var

$(STAMP): setup.cfg pyproject.toml scripts/bootstrap
	scripts/bootstrap
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/sf dev

test: $(STAMP)
	scripts/test

bench: $(STAMP)
	$(VENV)/bin/python bench/api.py

lint: $(STAMP)
	$(VENV)/bin/ruff check sf tests bench
	$(VENV)/bin/mypy sf

clean-var:
	$(VENV)/bin/sf services stop || true
	rm -rf var
