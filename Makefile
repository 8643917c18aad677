# wsproxy: the two commands for a fresh machine are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PY312   ?= $(shell ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python 2>/dev/null | tail -n 1)
VENV312 ?= .venv312
PYTEST_ARGS ?=

.PHONY: help demo test build test-unit test-pure test-py312 conformance conformance-full annotate clean bench bench-quick bench-tls bench-tools fuzz soak

help:
	@echo "make demo         venv + install + two demo members + the proxy (prints the URL)"
	@echo "make test         install test deps, build the C accelerators, run the whole suite"
	@echo "make conformance  Autobahn|Testsuite through the proxy vs direct (all groups)"
	@echo "make annotate     cython -a reports for ext/*.pyx (ext/*.html)"
	@echo "make bench        benchmark suite vs direct, HAProxy, NGINX (~12 min; writes benchmarks/RESULTS.md)"
	@echo "make bench-quick  the same, 1 repeat and short windows (~2 min; prints only)"
	@echo "make bench-tls    wss through wsproxy and HAProxy (~5 min; appends/replaces the TLS section of RESULTS.md)"
	@echo "make fuzz         atheris harnesses (fuzz/), C and pure build, FUZZ_TIME=300 s each"
	@echo "make soak         10 min of mixed traffic; RSS and fds must stay flat (SOAK_ARGS=--quick: 1 min)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# -- demo: a plain (non-editable) install, as an operator would do -----------------------
demo: $(BIN)/python
	$(BIN)/pip install -q .
	cd /tmp && $(abspath $(BIN))/wsproxy demo

# -- tests: the source tree with the accelerators built in place -----------------------
$(VENV)/.test-deps: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

build: $(VENV)/.test-deps
	WSPROXY_REQUIRE_EXTENSIONS=1 $(BIN)/python setup.py -q build_ext --inplace

test: build
	$(BIN)/python -m wsproxy version
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(MAKE) test-pure
	$(MAKE) test-py312

# The pure-Python build: the same unit tests (both twins run anyway) and the relay tests
# with the proxy itself running without accelerators.
test-pure:
	WSPROXY_NO_EXTENSIONS=1 $(BIN)/python -m wsproxy version
	WSPROXY_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q -m "not slow and not conformance" tests/unit tests/integration

# Python 3.12 changed transport buffer ownership on partial writes: run the relay there too.
test-py312:
	@if [ -z "$(PY312)" ]; then echo "python3.12 not found (pyenv): skipping the 3.12 run"; exit 0; fi; \
	 [ -x $(VENV312)/bin/python ] || $(PY312) -m venv $(VENV312); \
	 $(VENV312)/bin/pip install -q -e '.[test]' && \
	 WSPROXY_REQUIRE_EXTENSIONS=1 $(VENV312)/bin/python setup.py -q build_ext --inplace && \
	 $(VENV312)/bin/python -m wsproxy version && \
	 $(VENV312)/bin/python -m pytest -q -m "not slow and not conformance" tests/integration

# Autobahn|Testsuite (Python 2.7 venv in .conformance/venv27): every group, 12.* and 13.*
# (compression) included, direct and through wsproxy side by side: about 20 minutes.
conformance: build
	bash tests/conformance/setup_py27.sh
	$(BIN)/python tests/conformance/run.py --full --parallel
	$(BIN)/python tests/conformance/run.py --full --parallel --relay raw --out .conformance/full-raw

# -- benchmarks (issue #4): benchmarks/README.md says how to read them -------------------
# HAProxy and NGINX come from apt where this user may install (root or sudo -n); without
# them their columns read "n/a". RUNLEVEL=1 keeps Debian from starting them as services.
BENCH_ARGS ?=
$(VENV)/.bench-deps: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench-tools:
	@missing=""; for t in haproxy nginx; do \
	   command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	 [ -z "$$missing" ] && exit 0; \
	 if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	 else echo "bench:$$missing not installed and no root: those columns will read n/a"; exit 0; fi; \
	 if ! command -v apt-get >/dev/null 2>&1; then echo "bench: no apt-get:$$missing will read n/a"; exit 0; fi; \
	 echo "bench: installing haproxy nginx-light (apt-get)"; \
	 ( $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
	     apt-get install -y -qq haproxy nginx-light ) >/dev/null 2>&1 \
	   || echo "bench: apt-get could not install haproxy/nginx-light: those columns will read n/a"

bench: bench-tools build $(VENV)/.bench-deps
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

bench-quick: bench-tools build $(VENV)/.bench-deps
	$(BIN)/python benchmarks/run.py --quick $(BENCH_ARGS)

# TLS termination (issue #7): wss through wsproxy and HAProxy; TLS_ARGS=--quick prints only
TLS_ARGS ?= --append benchmarks/RESULTS.md
bench-tls: bench-tools build $(VENV)/.bench-deps
	$(BIN)/python benchmarks/tls.py $(TLS_ARGS)

# -- fuzzing (issue #7): the harnesses in fuzz/; new inputs in .fuzz/corpus, crashes in .fuzz/artifacts
FUZZ_TIME ?= 300
FUZZ_ARGS ?=
$(VENV)/.fuzz-deps: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/pip install -q -e '.[fuzz]'
	touch $@

fuzz: build $(VENV)/.fuzz-deps
	$(BIN)/python fuzz/run.py --time $(FUZZ_TIME) $(FUZZ_ARGS)

# -- soak (issue #7): mixed traffic through wsproxy, RSS and fds sampled ------------------
SOAK_ARGS ?=
soak: build
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

annotate: $(VENV)/.test-deps
	WSPROXY_CYTHON_ANNOTATE=1 $(BIN)/python setup.py -q build_ext --inplace --force

clean:
	rm -rf build *.egg-info wsproxy/_ext/*.so ext/*.c ext/*.html .pytest_cache
