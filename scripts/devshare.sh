#!/usr/bin/env bash
# Gathers into .devshare/ (git-ignored) what a GPU machine of the workplace's device tool needs to
# run what was built here. That machine has the same torch (2.11, CUDA 13) in its Python 3.12, but
# none of Debian's libraries, and a carry is limited to 64 MiB:
#   .devshare/lib/      libqinterp.so.0 and the Debian libraries it links that are not torch's,
#                       CUDA's or glibc's (HDF5 and its closure, PCRE2, ICU)
#   .devshare/bin/      the binaries named on the command line (default: the CUDA tests, the
#                       library's tests for its CUDA cases, and the 4-bit kernel benchmark)
#   .devshare/fixtures/stories260K/   the test model and tokenizer
# Then, with the device tool (carry [".devshare"]), all GPU checks in one call:
#   bash scripts/gpu_checks.sh
# or single steps:
#   bash scripts/gpu_run.sh .devshare/bin/qinterp_cuda_tests
#   python3 scripts/build_python_ext.py --lib .devshare/lib/libqinterp.so.0 --out .devshare/py
#   PYTHONPATH=.devshare/py bash scripts/gpu_run.sh python3 -m pytest -q -rs tests/python/test_gguf_blocks.py
#   QINTERP_PY=.devshare/py bash scripts/gpu_run.sh python3 bench/analyses.py --device cuda
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${BUILD:-build}"
SHARED="${QINTERP_SHARED:-../shared}"
lib="$(ls "$BUILD"/libqinterp.so.*.*.* 2>/dev/null | head -1 || true)"
[ -n "$lib" ] || { echo "devshare: no $BUILD/libqinterp.so.X.Y.Z; run make build first" >&2; exit 1; }
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("$BUILD/tests/qinterp_cuda_tests" "$BUILD/tests/qinterp_tests" "$BUILD/qinterp_quant4_bench")

rm -rf .devshare
mkdir -p .devshare/lib .devshare/bin .devshare/fixtures
cp "$lib" .devshare/lib/libqinterp.so.0
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "devshare: $b is not a built executable" >&2; exit 1; }
  cp "$b" .devshare/bin/
done
# Libraries the loader resolved outside torch's and CUDA's folders, less glibc and the compiler
# runtime (the GPU machine's own are newer, and mixing glibc builds breaks).
skip='^(ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libutil|libstdc\+\+|libgcc_s|libgomp)\.'
for f in "$lib" "${bins[@]}"; do ldd "$f"; done | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    case "$path" in */site-packages/* | /usr/local/cuda*) continue ;; esac
    [[ "$name" =~ $skip ]] && continue
    [[ "$name" == libqinterp* ]] && continue
    cp -L "$path" ".devshare/lib/$name"
  done
cp -r "$SHARED/fixtures/stories260K" .devshare/fixtures/
size=$(du -sm .devshare | cut -f1)
echo "devshare: .devshare is ${size} MiB ($(ls .devshare/lib | wc -l) libraries, ${#bins[@]} binaries)"
if [ "$size" -gt 62 ]; then
  echo "devshare: over the device tool's 64 MiB carry (with the working tree); name fewer binaries" >&2
  exit 1
fi
