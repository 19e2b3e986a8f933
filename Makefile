# SF: `make run` runs the whole platform, `make test` runs the test suite, `make check` runs the
# linters and the fast tier (the tests that need no nginx, FFmpeg or browser) for everyday work.
# Both install what is missing first (system packages, virtualenv) and start the services.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test check install bench lint clean-var

$(STAMP): setup.cfg pyproject.toml scripts/bootstrap web/package.json web/package-lock.json
	scripts/bootstrap
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	cd web && npm ci --no-audit --no-fund --loglevel=error  # hls.js, uPlot: served from web/node_modules
	touch $(STAMP)

install: $(STAMP)

# `make run TLS=1`: nginx serves HTTPS on SF_HTTP_PORT with a self-signed pair in var/tls.
run: $(STAMP)
ifdef TLS
	$(VENV)/bin/sf tls-cert >/dev/null
	SF_TLS_CERT=$(CURDIR)/var/tls/cert.pem SF_TLS_KEY=$(CURDIR)/var/tls/key.pem $(VENV)/bin/sf dev
else
	$(VENV)/bin/sf dev
endif

test: $(STAMP)
	scripts/test

check: lint
	scripts/test -m "not platform"

bench: $(STAMP)
	$(VENV)/bin/python bench/api.py

lint: $(STAMP)
	$(VENV)/bin/ruff check sf tests bench harness
	$(VENV)/bin/mypy sf

clean-var:
	$(VENV)/bin/sf services stop || true
	rm -rf var
