# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	# The optional runtimes (ExecuTorch, LiteRT, OpenVINO, OpenCV) second, so CI tests them, with their dependency tree
	# pinned to a known-good set: unpinned, pip backtracked through torch versions for over 10 minutes.
	$(PY) -m pip install -q -e '.[test,all]' -c .ci/constraints.txt
	# TFLite's standard metadata reader, for the tests to read the .tflite metadata back: in its own folder, run in
	# a subprocess, because it pins protobuf < 4 (onnx needs >= 5).
	$(PY) -m pip install -q --no-deps --target $(VENV)/tflite-support 'tflite-support==0.4.4'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgetl run

# The layers contract (import-linter, in pyproject.toml) and the linter (ruff).
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) artifacts/*/
