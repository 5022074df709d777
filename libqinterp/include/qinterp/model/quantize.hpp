// Quantizing a whole model, and GPTQ's calibration windows. Saving: checkpoint.hpp.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

#include "qinterp/model/checkpoint.hpp"  // save_model, for callers that quantize then save
#include "qinterp/model/model.hpp"
#include "qinterp/quant/spec.hpp"

namespace qinterp::model {

// GPTQ layer by layer (the reference's sequential procedure): the calibration sequences run
// through the blocks already quantized; block l's seven linear layers are quantized from their
// inputs under the full-precision block l; then block l is rerun quantized to feed block l + 1.
// calib: [N, T] int64 token ids (no padding). progress(layer_done, layers) per block.
void quantize_gptq(Model& model, const quant::QuantSpec& spec, const at::Tensor& calib,
                   const std::function<void(int64_t, int64_t)>& progress = {});

// Quantizes in place with any spec: nf4/fp4/int8/rtn directly, GPTQ with `calib` (required).
void quantize_model(Model& model, const quant::QuantSpec& spec, const at::Tensor& calib = {},
                    const std::function<void(int64_t, int64_t)>& progress = {});

// GPTQ's calibration as the field draws it (the IST-DASLab loaders): `n` windows of `seqlen`
// tokens at random starts in the token stream `ids` [T], the starts drawn exactly as Python's
// random.seed(seed); random.randint(0, T - seqlen - 1) draws them, so the same stream gives the
// reference's windows. Needs T > seqlen. Returns [n, seqlen] int64.
at::Tensor random_calibration_windows(const at::Tensor& ids, int64_t n, int64_t seqlen, uint64_t seed = 0);

// Random-free default calibration for GPTQ when the caller has none: `n` windows of `seqlen`
// tokens cut from the concatenation of `ids` rows (real tokens only, mask applied).
at::Tensor calibration_windows(const at::Tensor& ids, const at::Tensor& mask, int64_t n, int64_t seqlen);

}  // namespace qinterp::model
