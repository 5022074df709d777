// QuantizedTensor: a weight in quantized storage, and the layout of every format's parts.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "qinterp/quant/spec.hpp"

namespace qinterp::quant {

// A weight in quantized storage. Which members are set depends on spec.method:
//   NF4 / FP4  data    uint8 [(numel + 1) / 2]   two codes per byte, even element in the high nibble
//              absmax  float32 [nblocks]         (double_quant = 0)
//                   or uint8 [nblocks]           (double_quant = 1) with
//              absmax2 float32 [ceil(nblocks / 256)], offset float32 [] (a scalar, kept on the
//              CPU whatever the device), code2 float32 [256]
//   Int8       data    int8 [rows, cols]         round(W * 127 / rowmax), half to even
//              scale   float32 [rows]            rowmax (bitsandbytes' SCB)
//   RTN / GPTQ data    uint8 [rows, (cols + 1) / 2] for bits <= 4 (two codes per byte, even column
//                      high), uint8 [rows, cols] for 8 bits; codes 0 .. 2^bits - 1
//              scale, zero float32 [rows, groups]; g_idx int32 [cols] (group of each column)
//              W[r, c] = scale[r, g] * (code[r, c] - zero[r, g]) with g = g_idx[c]
// 2-D weights are [out, in] as in torch.nn.Linear; NF4/FP4 accept any shape.
struct QuantizedTensor {
  QuantSpec spec;
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;  // of the original tensor: what dequantize() returns
  at::Tensor data, absmax, absmax2, offset, code2, scale, zero, g_idx;

  int64_t numel() const;
  int64_t nbytes() const;  // bytes of all storage tensors
  at::Device device() const { return data.device(); }
  QuantizedTensor to(at::Device device) const;
  // Storage tensors by suffix ("qdata", "absmax", ...) for saving; from_parts() inverts it.
  std::vector<std::pair<std::string, at::Tensor>> parts() const;
  static QuantizedTensor from_parts(const QuantSpec& spec, std::vector<int64_t> shape, at::ScalarType dtype,
                                    const std::vector<std::pair<std::string, at::Tensor>>& parts,
                                    const std::string& where);
};

}  // namespace qinterp::quant
