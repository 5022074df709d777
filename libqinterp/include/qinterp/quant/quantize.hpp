// Quantized tensors: quantize / dequantize in every format of spec.hpp, on CPU (vectorized,
// at::parallel_for) or CUDA (libqinterp/cuda/), chosen by the input's device. The bit-level
// definitions are the reference functions in reference.hpp; the storage layout of each format is
// stated in quantized_tensor.hpp, and format.hpp is the table every format is reached through.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "qinterp/quant/format.hpp"
#include "qinterp/quant/quantized_tensor.hpp"
#include "qinterp/quant/spec.hpp"

namespace qinterp::quant {

// NF4, FP4, Int8 and RTN (GPTQ needs calibration: gptq.hpp). x: float32/float16/bfloat16.
QuantizedTensor quantize(const at::Tensor& x, const QuantSpec& spec);
// Back to a dense tensor of q.dtype (or `dtype` when given), on q's device.
at::Tensor dequantize(const QuantizedTensor& q, at::ScalarType dtype = at::ScalarType::Undefined);

// ---- the pieces, for tests and for users who want bitsandbytes' functional API ----

// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map()), float32 [256], ascending.
at::Tensor dynamic_map();
// x any float dtype, any shape, contiguous. Returns (packed uint8, absmax float32).
std::pair<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& x, Method type, int64_t block);
// absmax float32 [nblocks]. Returns `dtype` with `shape`.
at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax, Method type, int64_t block,
                           at::IntArrayRef shape, at::ScalarType dtype);
// 8-bit blockwise with the dynamic map; x float32. Returns (codes uint8, absmax float32).
std::pair<at::Tensor, at::Tensor> quantize_blockwise8(const at::Tensor& x, int64_t block);
// code: the 256 values (default: dynamic_map()).
at::Tensor dequantize_blockwise8(const at::Tensor& q, const at::Tensor& absmax, int64_t block,
                                 const at::Tensor& code = {});
// float32 absmax of a 4-bit tensor, undoing double quantization when present.
at::Tensor absmax_f32(const QuantizedTensor& q);

// LLM.int8() pieces (bitsandbytes int8_vectorwise_quant): row-wise int8 of x [rows, cols] with
// absmax over the values below `threshold` (all values when threshold = 0). outlier_cols: int64
// indices of columns holding any |x| >= threshold (empty when none or threshold = 0).
struct Int8Rows {
  at::Tensor q, absmax, outlier_cols;
};
Int8Rows int8_vectorwise_quant(const at::Tensor& x, double threshold);
// y = x Wᵀ (+ bias) with W = data * scale / 127: int8 x int8 -> int32 on the non-outlier
// columns, outlier columns in x's dtype against the dequantized weight columns.
at::Tensor int8_linear(const at::Tensor& x, const QuantizedTensor& w, const at::Tensor& bias = {});

// y = x Wᵀ for one token per row of x ([n, in], n small) and a 4-bit weight [out, in], fused (the
// weight decoded in registers, never written out): the CUDA kernel when x is on a GPU and
// in % block == 0; on a CPU with AVX2 + FMA when x is float32 and `in` is even (products of the
// exact dequantized values, summed in fp32 in another order than a matmul); else dequantize +
// matmul. With the spec's decode=q8, float32 x on the CPU with in % block == 0 is quantized to int8
// in runs of 32 and multiplied in integers instead (ref::gemv_4bit_q8 defines the result). Returns
// x's dtype.
at::Tensor gemv_4bit(const at::Tensor& x, const QuantizedTensor& w);

// The same for an rtn/gptq weight (any bits, groups in natural column order): fused on a CPU with
// AVX2 + FMA for float32 x (and an even group when codes are two per byte); else (act-order, other
// devices and dtypes) dequantize + matmul. decode=q8 (bits <= 4): float32 x on the CPU, groups and
// `in` whole runs of 32, as ref::gemv_grouped_q8. Returns x's dtype.
at::Tensor gemv_grouped(const at::Tensor& x, const QuantizedTensor& w);

// y = x Wᵀ for a dense float32 weight [out, in] and a few rows of float32 x on a CPU with AVX2 +
// FMA: rows streamed by every thread, summed in fp32 in another order than a matmul; else
// at::linear. dense_linear adds the bias and takes this path only for <= 4 rows without gradient
// (a decoding step); the model's dense layers and LM head go through it.
at::Tensor gemv_dense(const at::Tensor& x, const at::Tensor& w);
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = {});

// at::linear(x, w, bias) for x and w of one floating dtype. On a CPU a float16 or bfloat16 product
// of kWideRows (16) rows or more runs as a float32 product of the exactly widened operands, bias added in
// float32, rounded once to the dtype: the float32 accumulation of a GPU's fp16/bf16 GEMM, at float32
// speed (ATen's own CPU fp16/bf16 product took 3.4-6.6x as long on these shapes). Without gradient
// the float32 copy of w is made a slice of output features at a time, so it stays small beside w.
// Every general-path product of the quantized formats and the model's dense layers goes through it.
inline constexpr int64_t kWideRows = 16;
at::Tensor wide_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = {});

// A float32 weight [out, in] whose every run of 32 values in a row is d * q exactly, for one float
// d and int8 q in [-127, 127] per run -- what a GGUF Q8_0 tensor (the LM head of all three GGUF
// models here) decodes to. The same values in that form: q [out, in] int8, d [out, in / 32] float32,
// 1.125 bytes a weight instead of 4. They stay tied to w: fresh_for(w) is false once w's storage or
// its version counter (bumped by every in-place ATen write) differs from when they were made.
struct Q8Blocks {
  at::Tensor q, d;
  const void* src_data = nullptr;
  int64_t src_version = -1;
  bool defined() const { return q.defined(); }
  int64_t bytes() const { return q.defined() ? static_cast<int64_t>(q.nbytes() + d.nbytes()) : 0; }
  bool fresh_for(const at::Tensor& w) const {
    return q.defined() && w.defined() && w.data_ptr() == src_data && static_cast<int64_t>(w._version()) == src_version;
  }
};
// w's blocks when w is float32 on the CPU, contiguous, in % 32 == 0 and every value equals d * q
// exactly (d = the run's max |value| / 127); an undefined Q8Blocks otherwise. One pass over w.
Q8Blocks exact_q8_blocks(const at::Tensor& w);
// y = x Wᵀ for a few rows of float32 x on the CPU from those blocks: per run, d times the fp32 sum
// of x * q (AVX2 + FMA where the CPU has them, else the same sums in a scalar loop). The products
// are of W's exact values; only the order of the fp32 sums differs from a matmul over W.
at::Tensor gemv_q8_blocks(const at::Tensor& x, const Q8Blocks& w);

}  // namespace qinterp::quant
