# The README's commands. Each target sets up its own virtual environment first.
#   make test      unit tests + every chapter executed by nbval (what CI runs)
#   make book      the rendered site in _build/html (offline: MathJax, BokehJS included)
#   make notebooks re-execute every chapter in place; make notebook NB=03 for one
#   make student / make instructor   the two editions (solutions hidden / shown)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test book browser-test notebooks notebook check-notebooks student instructor demo-model benchmarks clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests book --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 --durations=15 -q

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html ($$(du -sh _build/html | cut -f1), works offline)"

# The built book in headless Chromium, offline (needs: apt-get install chromium chromium-driver)
browser-test: $(STAMP)
	$(BIN)/python -m pytest tests/test_browser.py -q

notebooks: $(STAMP)
	$(BIN)/python tools/book.py execute

notebook: $(STAMP)
	$(BIN)/python tools/book.py execute $(NB)

check-notebooks: $(STAMP)
	$(BIN)/python tools/book.py check

student: $(STAMP)
	$(BIN)/python tools/book.py edition student

instructor: $(STAMP)
	$(BIN)/python tools/book.py edition instructor

demo-model: $(STAMP)
	$(BIN)/python -m frcnn_lite train --recipe demo --out data/demo_model.pt

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/train_vs_torchvision.py --threads 1

clean:
	rm -rf _build .pytest_cache
