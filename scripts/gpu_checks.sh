#!/usr/bin/env bash
# Every check and benchmark that needs a GPU, in one call of the workplace's device tool (one
# command may run 10 minutes; a session has 30 minutes of device time, and a machine idles out
# 30 s after a call, so one full call costs least). Here, first:
#   make build && bash scripts/devshare.sh
# then run `bash scripts/gpu_checks.sh` there with carry [".devshare"]. Each step has its own time
# limit, so that one hang does not take the rest with it; everything is logged to
# $OUT/gpu_checks.log (or ./gpu_checks.log without $OUT), and the last lines sum up which steps
# passed. Steps: the CUDA kernel tests against their CPU twins, the library's CUDA cases, the
# 4-bit kernel benchmark (three runs: cuBLAS times vary between runs), the Python module built
# for that machine's Python and its GPU tests, and the analyses benchmark with qinterp on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d .devshare/lib ] || { echo "gpu_checks: no .devshare/ (run scripts/devshare.sh here, carry .devshare)" >&2; exit 2; }
log="${OUT:-.}/gpu_checks.log"
: >"$log"
export PYTHONUNBUFFERED=1
# The device tool stops a command at 600 s: stop starting steps before that, and cut each step's
# limit to what is left. Steps run in order of importance.
budget="${GPU_CHECKS_BUDGET:-560}"
declare -a summary
step() {  # step NAME SECONDS command...
  local name="$1" limit="$2"
  shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt 15 ]; then
    summary+=("$(printf '%-32s skipped: no time left' "$name")")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" bash scripts/gpu_run.sh "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-32s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
}

step "cuda kernel tests" 120 .devshare/bin/qinterp_cuda_tests
for i in 1 2 3; do step "4-bit bench run $i" 60 .devshare/bin/qinterp_quant4_bench; done
[ -x .devshare/bin/qinterp_tests ] && step "library CUDA cases" 120 .devshare/bin/qinterp_tests --gtest_filter='*Cuda*'
step "python module build" 240 python3 scripts/build_python_ext.py --lib .devshare/lib/libqinterp.so.0 --out .devshare/py
if ls .devshare/py/qinterp/_C*.so >/dev/null 2>&1; then
  export PYTHONPATH="$PWD/.devshare/py" QINTERP_PY="$PWD/.devshare/py"
  step "analyses bench (qinterp on GPU)" 300 python3 bench/analyses.py --device cuda --only corr
  step "python GPU tests" 90 python3 -m pytest -q -rs tests/python/test_gguf_blocks.py
  # IG on the GPU against Captum (carry captum as a wheel in .whl: see docs/performance.md); the
  # 98 MB SmolLM2 GGUF cannot travel, so both sides load random weights of its shape.
  if ls .whl/captum-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/captum-*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    step "IG vs Captum on the GPU (fp16)" 240 python3 bench/ig.py --random-init --device cuda --dtype fp16 --examples 5
  fi
  # Paper 2 on the GPU: a randomly initialised model of SmolLM2's shape (the GGUF cannot travel).
  if python3 -c "import transformers" 2>/dev/null && [ -x .devshare/bin/qinterp ]; then
    python3 - <<'PY'
import torch, transformers
c = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                             tie_word_embeddings=True, rope_theta=100000.0)
torch.manual_seed(0)
transformers.LlamaForCausalLM(c).save_pretrained("/tmp/smol-random", safe_serialization=True)
PY
    step "speed on the GPU (paper 2's Table 8 layout)" 240 .devshare/bin/qinterp speed --model /tmp/smol-random \
      --device cuda --quant fp16 --quant int8 --quant nf4 --quant rtn4 --prompt-tokens 256 --new-tokens 512
  fi
fi
if command -v compute-sanitizer >/dev/null; then
  step "memcheck: 4-bit kernels" 180 compute-sanitizer --tool memcheck --error-exitcode 1 \
    .devshare/bin/qinterp_cuda_tests --gtest_filter='CudaQuant4.Gemv*:CudaQuant4.Dequantize*'
fi
{
  echo "=== summary (rc 0 = passed; 124 = stopped at its time limit)"
  printf '%s\n' "${summary[@]}"
} | tee -a "$log"
