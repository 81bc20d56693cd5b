VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test demo bench data clean

install:
	VENV=$(VENV) TORCH_SPEC='$(TORCH_SPEC)' bash tools/install.sh

test: install
	$(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)
