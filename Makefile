# The two commands of the README:
#   make demo  — installs what is missing, builds, runs the demo (results/ gets a table and a figure)
#   make test  — installs what is missing, builds, runs every test (C++ via ctest, then Python)
# Both are quick the second time: setup.sh downloads nothing on a set-up machine, ccache and
# ninja rebuild only what changed.
QINTERP_HOME ?= $(HOME)/.cache/qinterp
QINTERP_VENV ?= $(QINTERP_HOME)/venv
PYTHON := $(QINTERP_VENV)/bin/python
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
export QINTERP_HOME QINTERP_VENV
# ccache: paths relative to the clone, so fresh clones elsewhere (CI) hit the same cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1

.PHONY: all setup configure build test test-cpp test-python demo install-python clean

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(PYTHON) $(CMAKE_ARGS)

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test-cpp: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-python: build
	PYTHONPATH=$(CURDIR)/$(BUILD)/python $(PYTHON) -m pytest -q -rs tests/python

test: test-cpp test-python

demo: build
	PYTHONPATH=$(CURDIR)/$(BUILD)/python $(PYTHON) examples/demo.py

# Builds and installs the Python package into the environment against its torch (no isolation,
# so pip does not fetch another torch).
install-python: setup
	$(PYTHON) -m pip install --no-build-isolation -v .

clean:
	rm -rf $(BUILD)
