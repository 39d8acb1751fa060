# The two commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ACCELERATE_LOCAL := --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: setup demo demo-data test test-fast clean-demo

# Create the virtualenv and install the project with pinned versions (lock.txt). basicsr and pyiqa are
# installed without their stale declared dependencies (see README, "Installation").
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml lock.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]' -c lock.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -r requirements-nodeps.txt -c lock.txt
	touch $@

demo-data: setup
	$(BIN)/python -m ggt_ir.data.demo --out datasets/demo

# Train a small NAFNet on the demo data (validating as it goes), then score it on the demo test split.
demo: demo-data
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch $(ACCELERATE_LOCAL) train.py -opt options/demo/nafnet_demo.yml
	HF_HUB_OFFLINE=1 $(BIN)/ggt-ir eval -opt options/eval/demo.yml

test: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q

# everything except the end-to-end tests that launch processes
test-fast: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf datasets/demo experiments/nafnet_demo experiments/nafnet_demo_archived_* results/nafnet_demo
