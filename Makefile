# `make demo` and `make test` work on a fresh clone with nothing installed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
export MUJOCO_GL ?= egl

.PHONY: install demo test test-fast lint wheel wheel-smoke bench clean

# torch is pinned and installed first: a bare `torch` requirement would pull multi-GB CUDA builds.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m wmgym.cli demo --task pick

test: install
	$(PY) -m pytest -q

test-fast: install  # the edit loop: everything but the tests marked slow
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check wmgym tests examples research setup.py

wheel: install
	rm -rf dist && $(PY) -m pip wheel -q --no-deps . -w dist

# The built wheel in a clean virtual environment, outside the repository.
wheel-smoke: wheel
	rm -rf /tmp/wmgym-wheel-venv && python3 -m venv /tmp/wmgym-wheel-venv
	/tmp/wmgym-wheel-venv/bin/pip install -q $(TORCH)
	/tmp/wmgym-wheel-venv/bin/pip install -q dist/wmgym-*.whl
	cp tests/wheel_smoke.py /tmp/wmgym-wheel-venv/ && cd /tmp/wmgym-wheel-venv && \
		./bin/python wheel_smoke.py

bench: install
	$(PY) -m wmgym.cli bench sim
	$(PY) -m wmgym.cli bench speed

clean:
	rm -rf $(VENV) dist build out .pytest_cache .ruff_cache
