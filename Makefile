# embedmask-mmdet: `make demo` and `make test` do everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_CONFIG ?= configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py
DEMO_DIR ?= work_dirs/demo
DATA ?= data/synthetic
# pytest-xdist workers for make test / test-fast (0: one process); each
# worker runs torch on one thread (tests/conftest.py)
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# e.g. DEMO_TRAIN_ARGS=--amp (bf16 autocast on a CPU) DEMO_DIR=work_dirs/demo_amp
DEMO_TRAIN_ARGS ?=

.PHONY: install test test-fast test-bench demo data bench clean

install:
	VENV=$(VENV) TORCH_SPEC='$(TORCH_SPEC)' bash tools/install.sh

# CI: every test, on TEST_WORKERS processes, with the 15 slowest listed
# (docs/getting_started.md has the suite's time). pytest's exit 5 (no test
# collected) is a failure, like every non-zero code
test: install
	$(PY) -m pytest tests -q -p no:cacheprovider $(XDIST) --durations=15 $(PYTEST_ARGS)

# the development loop (under 2 minutes): everything but the tests marked
# slow (subprocess, end-to-end, training, export, the bench smoke tests)
test-fast: install
	$(PY) -m pytest tests -q -p no:cacheprovider $(XDIST) -m 'not slow' $(PYTEST_ARGS)

# the benchmark study's smoke tests only (marker bench)
test-bench: install
	$(PY) -m pytest tests -q -p no:cacheprovider -m bench $(PYTEST_ARGS)

data: install
	@if [ -f $(DATA)/annotations/instances_val.json ]; then \
	  echo "[data] $(DATA) exists"; \
	else $(PY) tools/make_synthetic_coco.py --out $(DATA); fi

demo: data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR) --resume $(DEMO_TRAIN_ARGS)
	$(PY) tools/test.py $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" --work-dir $(DEMO_DIR)
	$(PY) tools/demo.py $(DATA)/val $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" --out-dir $(DEMO_DIR)/predictions --limit 12 --score-thr 0.5
	$(PY) tools/plot_curves.py $(DEMO_DIR) --out $(DEMO_DIR)/loss_curve.png
	$(PY) tools/print_metrics.py $(DEMO_DIR)/test_metrics.json

# EmbedMask vs FCOS/CondInst/Mask R-CNN/SOLOv2/YOLACT/RTMDet-Ins on this
# machine, batched inference, TTA, deployment -> docs/benchmarks.md + PNGs
# (about 90 minutes on 2 CPU cores; run it on a quiet machine). Options:
# BENCH_ARGS='--train-iters 300 --models ...', '--only-tta', '--only-deploy'
bench: data
	$(PY) tools/benchmark.py --data-root $(DATA) --out docs/benchmarks.md $(BENCH_ARGS)

clean:
	rm -rf work_dirs
