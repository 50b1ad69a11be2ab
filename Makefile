# apparate_trt: the two quick-start commands are `make demo` and `make test`.
PY ?= python3
CC ?= gcc
DATA ?= data
OUT ?= out

.PHONY: install demo test test-c test-py lint models lib clean

install:
	bash scripts/install_system.sh
	$(PY) -m pip install -q --no-build-isolation -e '.[train,models,plot,serve,cluster,test]'

# Builds the real CV model (EfficientNet-Lite0 + Fashion-MNIST head), compiles it, replays it on
# Apparate and on vanilla at the same arrivals (scripts/demo.sh prints the time it took).
demo: install
	PY=$(PY) DATA=$(DATA) OUT=$(OUT) bash scripts/demo.sh

models: install
	$(PY) scripts/build_real_models.py --out $(DATA)

test: install test-c test-py

# ruff lint and format check (config in pyproject.toml); CI runs it before the tests. `ruff format .` fixes the format.
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-c:
	mkdir -p build
	$(CC) -O2 -std=c11 -Wall -Wextra -Werror -Icsrc csrc/*.c -o build/test_core -lm
	./build/test_core

# The C core as a static library for C/C++ services: link build/libapparate_core.a, include csrc/.
lib:
	mkdir -p build/obj
	for f in $$(ls csrc/*.c | grep -v '/test_'); do $(CC) -O3 -std=c11 -fPIC -Icsrc -c $$f -o build/obj/$$(basename $$f .c).o || exit 1; done
	ar rcs build/libapparate_core.a build/obj/*.o

test-py:
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info apparate_trt/_core.c apparate_trt/*.so
