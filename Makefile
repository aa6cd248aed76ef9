# Two entry points for a newcomer: `make demo` and `make test`. Each builds .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: venv demo expand-demo slim-demo test test-fast test-torch-range lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[onnx,dev]"
	# timm's models are tested as model code this project did not write; without its dependencies
	# (torchvision does not load beside the pinned CPU torch; tests/_stubs stands in for the names it imports).
	$(BIN)/pip install -q --no-deps timm==1.0.31
	touch $(STAMP)

venv: $(STAMP)

# Train on scikit-learn's digits, then convert -> export -> verify each checkpoint, then compare
# test accuracy of the training model and of every shipped artifact, then quantize each ONNX to int8
# (Q/DQ) and compare its test accuracy and predictions with the training model.
demo: $(STAMP)
	$(BIN)/python examples/digits_demo.py --out demo-output
	for m in acb se; do \
	  $(BIN)/reparam deploy demo-output/$$m.pth -o demo-output/$$m-deploy --to onnx --fp16 --force \
	    --inputs demo-output/digits_test.npz --batch-size 64 || exit $$?; \
	  $(BIN)/python examples/digits_accuracy.py demo-output/$$m.pth demo-output/$$m-deploy \
	    --data demo-output/digits_test.npz || exit $$?; \
	  $(BIN)/reparam quantize demo-output/$$m-deploy/model.onnx --calib demo-output/digits_calib.npz \
	    -o demo-output/$$m.int8.onnx --reference demo-output/$$m.pth --eval demo-output/digits_test.npz \
	    || exit $$?; \
	done

# ACNet on your own network: plain resnet56_cifar (depth 8) trained as is vs expanded with ACBs,
# trained the same way and fused back into the plain class; test accuracy over three seeds.
expand-demo: $(STAMP)
	$(BIN)/python examples/acnet_expand_demo.py --out demo-output/expand_demo.json

# ScaleNet's neuron allocation on the digits: train a seed, `reparam slim` it, retrain, compare
# with the equally split ScaleNet of the same MACs (docs/scalenet.md).
slim-demo: $(STAMP)
	$(BIN)/python examples/scalenet_slim_demo.py --out slim-demo-output

test: $(STAMP)
	$(BIN)/ruff check reparam exporters tests examples benchmarks
	$(BIN)/python -m pytest -n 2 -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

# The lowest torch that pyproject.toml admits is the one .venv holds (TORCH_PIN, the whole suite in
# `make test`); the newest gets an environment of its own (the package index serves a CUDA build,
# which runs on the CPU) and the whole non-slow suite. Both then run convert, export onnx and verify
# on a zoo checkpoint (.ci/torch_smoke.sh).
TORCH_NEWEST := 2.15.0
NEWEST_VENV := .venv-torch-$(TORCH_NEWEST)

# the machine's pip constraints may cap torch below the newest release: none apply here
$(NEWEST_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/pip install -q --upgrade pip
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/pip install -q torch==$(TORCH_NEWEST)
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/pip install -q -e ".[onnx,dev]"
	$(NEWEST_VENV)/bin/pip install -q --no-deps timm==1.0.31
	touch $@

test-torch-range: $(STAMP) $(NEWEST_VENV)/.installed
	bash .ci/torch_smoke.sh $(VENV)
	$(NEWEST_VENV)/bin/python -m pytest -n 2 -q -m "not slow" -p no:cacheprovider
	bash .ci/torch_smoke.sh $(NEWEST_VENV)

lint: $(STAMP)
	$(BIN)/ruff check reparam exporters tests examples benchmarks
	$(BIN)/ruff format --check reparam exporters tests examples benchmarks

bench: $(STAMP)
	# timm's models are compared when timm imports; tests/_stubs stands in for the torchvision names it needs.
	# --deploy: reparam deploy vs its parts; --verify-stream: verify vs the raw runtimes (paired ratios)
	PYTHONPATH=tests/_stubs $(BIN)/reparam bench --deploy --verify-stream --out benchmarks/results.md --report benchmarks/results.json

clean:
	rm -rf $(VENV) demo-output slim-demo-output .pytest_cache .hypothesis
