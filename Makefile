# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint fuzz clean model

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/marginwatch demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo model's recipe (docs/training.md): 1200 synthetic training scans with the
# hard kinds enriched (tumour inside the margin, small foci at the ink), then
# `marginwatch train --preset demo` on the CPU (about 6-8 min of synthesis and 12-19 min
# of training on 2 cores). Evaluate on fresh seeds with `marginwatch evaluate` as
# docs/training.md shows.
MODEL_DATA ?= build/demo-data
MODEL_OUT  ?= build/demo-model
model: $(STAMP)
	$(BIN)/marginwatch synth $(MODEL_DATA)/train --images 1200 --tumour-fraction 0.35 \
		--patients 120 --inside-fraction 0.3 --focal-fraction 0.5 --seed 101 --workers 2 --force
	OMP_NUM_THREADS=2 $(BIN)/marginwatch train $(MODEL_DATA)/train/manifest.csv \
		--out $(MODEL_OUT) --preset demo $(TRAIN_ARGS)

bench: $(STAMP)
	$(BIN)/marginwatch bench --device cpu --region-px 1024

# Coverage-guided fuzzing of the image readers (atheris from PyPI); bounded, not in CI.
FUZZ_SECONDS ?= 300
FUZZ_CORPUS  ?= .fuzz/corpus
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet 'atheris>=2.3'
	mkdir -p $(FUZZ_CORPUS) .fuzz/crashes
	$(BIN)/python tests/fuzz/fuzz_readers.py -max_total_time=$(FUZZ_SECONDS) -timeout=20 \
		-rss_limit_mb=3072 -artifact_prefix=.fuzz/crashes/ -print_final_stats=1 $(FUZZ_CORPUS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo build .pytest_cache .fuzz
