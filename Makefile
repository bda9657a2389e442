# Quick start: `make demo` (set up, then the whole pipeline on synthetic data) and
# `make test` (set up, then the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint clean eval-real

setup:
	@./scripts/setup.sh

demo: setup
	rm -rf demo_output
	$(VENV)/bin/anomaly-seg demo --out demo_output

test: setup
	$(PY) -m pytest -q

# The evaluation grid on the real benchmark data beside the clone (../shared/realdata): docs/real_benchmarks.md
# (one thread: on a busy machine the flow fit's small ops stall behind a second, waiting thread)
eval-real: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/real_data.py --realdata ../shared/realdata

lint: setup
	$(VENV)/bin/ruff check anomaly_seg_ros test launch

clean:
	rm -rf $(VENV) demo_output .pytest_cache
