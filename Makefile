# The README's two commands. Each installs what it needs into the current Python environment
# once (a stamp file records it; a second run installs nothing), then runs.
PYTHON ?= python3
STAMP := .make/installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m medfm demo --out runs/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

lint: $(STAMP)
	$(PYTHON) -m ruff check medfm tests benchmarks

clean:
	rm -rf .make runs
