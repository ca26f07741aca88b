# The README's two commands. Each installs what it needs into the Python environment named by
# PYTHON once (a stamp file per environment records it; a second run installs nothing), then runs.
# CI picks a fresh virtual environment with: make test PYTHON=/path/to/venv/bin/python
PYTHON ?= python3
STAMP := .make/installed$(subst /,_,$(abspath $(shell command -v $(PYTHON))))

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@mkdir -p $(dir $(STAMP)) && touch '$(STAMP)'

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m medfm demo --out runs/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

lint: $(STAMP)
	$(PYTHON) -m ruff check medfm tests benchmarks

clean:
	rm -rf .make runs
