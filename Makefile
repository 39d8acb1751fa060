# The two commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ACCELERATE_LOCAL := --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: setup demo demo-data synth-demo test test-fast clean-demo

# Create the virtualenv and install the project with pinned versions (lock.txt). basicsr and pyiqa are
# installed without their stale declared dependencies (see README, "Installation").
# The test, quant (torchao, bitsandbytes) and deepspeed extras are installed so that their tests run here too.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml lock.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,quant,deepspeed]' -c lock.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -r requirements-nodeps.txt -c lock.txt
	touch $@

demo-data: setup
	$(BIN)/python -m ggt_ir.data.demo --out datasets/demo

# Train a small NAFNet on the demo data (validating as it goes), then score it on the demo test split.
demo: demo-data
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch $(ACCELERATE_LOCAL) train.py -opt options/demo/nafnet_demo.yml
	HF_HUB_OFFLINE=1 $(BIN)/ggt-ir eval -opt options/eval/demo.yml

# The synthesis pipeline (docs/synthesis.md) on the demo LQ images with tiny random models, on CPU: generate,
# QC 1 + 2, the review page (written, not opened), finalize, and the generator x prompting study.
synth-demo: demo-data
	$(BIN)/python -m ggt_ir.testing.synth --kontext datasets/demo/tiny-kontext --vl datasets/demo/tiny-qwen25-vl
	HF_HUB_OFFLINE=1 $(BIN)/ggt-ir synth -opt options/synth/demo.yml
	$(BIN)/ggt-ir synth review experiments/synth/demo
	$(BIN)/ggt-ir synth finalize experiments/synth/demo
	HF_HUB_OFFLINE=1 $(BIN)/ggt-ir synth compare -opt options/synth/demo_compare.yml

test: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q

# everything except the end-to-end tests that launch processes
test-fast: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf datasets/demo experiments/nafnet_demo experiments/nafnet_demo_archived_* results/nafnet_demo
