# `make demo` and `make test` work on a fresh clone with nothing installed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: install demo test lint bench collect clean

# torch is pinned and installed first: a bare `torch` requirement would pull multi-GB CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m wmgym.cli demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check wmgym tests examples scripts

bench: install
	$(PY) -m wmgym.cli bench sim
	$(PY) -m wmgym.cli bench speed

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
