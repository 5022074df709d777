// QuantSpec — one quantization recipe, parsed from the spec strings used everywhere (CLI, C++,
// Python): fp32 fp16 bf16 nf4 fp4 int8 rtn8 rtn4 gptq4 gptq3 gptq2, each with optional
// "name:key=value,key=value" parameters. Defaults reproduce the papers (PROTOCOLS.md):
//   nf4 / fp4   block=64 double_quant=1 compute=fp16        (bitsandbytes 4-bit)
//   int8        threshold=6.0 compute=fp16                  (LLM.int8())
//   rtnB        group=128 sym=1 compute=fp16                (round-to-nearest, GPTQ's quantizer)
//   gptqB       group=128 sym=1 act_order=0 damp=0.01 calib=128 seqlen=256 compute=fp16
// group=0 means one group per output row (per-channel).
// nf4, fp4, rtnB and gptqB (B <= 4) also take decode=exact|q8 (default exact): with q8, decoding
// steps on the CPU (a few float32 rows, no gradient) quantize their input to int8 in blocks of 32
// (llama.cpp's Q8_0 activations) and use integer dot products (src/quant/gemv_q8.hpp). Faster, not the
// papers' numerics; prefill, gradients and CUDA are unchanged. str() names it only when q8.
#pragma once
#include <string>

namespace qinterp::quant {

enum class Method { None, NF4, FP4, Int8, RTN, GPTQ };

struct QuantSpec {
  Method method = Method::None;
  std::string dtype = "fp32";    // for Method::None: fp32 / fp16 / bf16
  int bits = 32;                 // 4 for nf4/fp4, 8 for int8, 2..8 for rtn/gptq
  int block = 64;                // nf4/fp4 block size (32..4096, a power of two)
  bool double_quant = true;      // nf4/fp4: 8-bit quantized absmax, blocks of 256
  std::string compute = "fp16";  // dtype the quantized layer computes in
  double threshold = 6.0;        // int8: outlier threshold; 0 disables the decomposition
  int group = 128;               // rtn/gptq: columns per group; 0 = per output row
  bool sym = true;               // rtn/gptq: symmetric grid (zero at the middle code)
  bool act_order = false;        // gptq: columns in order of decreasing Hessian diagonal
  double damp = 0.01;            // gptq: damping as a fraction of mean(diag H)
  int calib = 128;               // gptq: calibration sequences
  int seqlen = 256;              // gptq: tokens per calibration sequence
  bool decode_q8 = false;        // nf4/fp4/rtn/gptq: int8 activations in CPU decoding steps

  bool quantized() const { return method != Method::None; }
  // Canonical form with every parameter, e.g. "nf4:block=64,double_quant=1,compute=fp16";
  // parse_quant_spec(s.str()) == s.
  std::string str() const;
  bool operator==(const QuantSpec& o) const { return str() == o.str(); }
};

// Throws Error naming the bad part and listing what is valid.
QuantSpec parse_quant_spec(const std::string& spec);

// The spec to load with on `device`: on a CPU a quantized spec that names no `compute` dtype gets
// compute=fp32: the fused decoding kernels take float32 rows (fp16 decoding was ~5x slower here;
// fp16 prompts run at float32 speed, see wide_linear) and the stored weights are the same; the
// paper's fp16 stays available by naming it (compute=fp16), as paper mode does. Others unchanged.
std::string spec_for_device(const std::string& spec, const std::string& device);

}  // namespace qinterp::quant
