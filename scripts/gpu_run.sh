#!/usr/bin/env bash
# Runs test and benchmark binaries built on another machine on a GPU machine that has the same
# torch (2.11, CUDA 13) in its own Python. Used with the workplace's device tool: here
# `bash scripts/devshare.sh` gathers .devshare/ (libqinterp and the Debian libraries it needs,
# binaries, fixtures); carry it, then there
#   bash scripts/gpu_run.sh <command...>
set -uo pipefail
PY="${PY:-python3}"
torch_lib="$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
site="$(dirname "$(dirname "$torch_lib")")"
cuda_libs="$(find "$site/nvidia" -name 'libcudart.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')"
cublas_libs="$(find "$site/nvidia" -name 'libcublas.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')"
export LD_LIBRARY_PATH="$PWD/.devshare/lib:$PWD/build:$torch_lib:$cuda_libs$cublas_libs${LD_LIBRARY_PATH:-}"
export QINTERP_SHARED="$PWD/.devshare"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$@"
