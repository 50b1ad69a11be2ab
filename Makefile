# apparate_trt: the two quick-start commands are `make demo` and `make test`.
PY ?= python3
CC ?= gcc
DATA ?= data
OUT ?= out

.PHONY: install demo test test-c test-py models clean

install:
	bash scripts/install_system.sh
	$(PY) -m pip install -q --no-build-isolation -e '.[train,models,plot,serve,test]'

# Builds the real CV model (EfficientNet-Lite0 + Fashion-MNIST head), compiles it, replays it.
demo: install
	$(PY) scripts/build_real_models.py --out $(DATA) --only cv
	apparate-compile $(DATA)/cv/model.onnx --data $(DATA)/cv/bootstrap.npz --out $(OUT)/cv --force
	apparate-run --engine-dir $(OUT)/cv --data $(DATA)/cv/eval.npz --arrivals poisson:100 --report $(OUT)/cv_report.json

models: install
	$(PY) scripts/build_real_models.py --out $(DATA)

test: install test-c test-py

test-c:
	mkdir -p build
	$(CC) -O2 -std=c11 -Wall -Wextra -Werror -Icsrc csrc/*.c -o build/test_core -lm
	./build/test_core

test-py:
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info apparate_trt/_core.c apparate_trt/*.so
