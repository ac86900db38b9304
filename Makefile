# Entry points for a fresh machine: `make demo`, `make test` (and `make docs`).
# Each creates .venv if missing: torch==2.13.0 (the CPU wheel) first, then this package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cvxlayer-installed
# the bench environment: cvxlayer plus the real peers (never in .venv)
BENCH_VENV := .venv-bench

.PHONY: demo test test-slow lint docs bench clean clean-kernels

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) examples/run_all.py

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 MPLBACKEND=Agg $(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/run.py

clean: clean-kernels
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site

# numba keys a cached kernel on its own file only: after editing a kernel that others
# inline (a cone's, `ipm_compiled`'s helpers), drop every cached build
clean-kernels:
	find cvxlayer -name '*.nbi' -delete -o -name '*.nbc' -delete

$(BENCH_VENV)/.installed: pyproject.toml
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[dev]" cvxpylayers==1.2.0 diffcp moreau moreau-cpu \
		proxsuite==0.8.0 osqp==1.1.3
	$(BENCH_VENV)/bin/python -m pip install -q --no-deps qpth mpc
	touch $@
