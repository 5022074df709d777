// Devices and compute dtypes by name. Devices: "cpu", "cuda", "cuda:N". Everything that moves a model or an analysis goes
// through these, so that asking for a GPU this process cannot use is a qinterp::Error saying so,
// not a torch error from deep inside (or a silent fallback).
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace qinterp {

// Throws Error for a malformed name or an unusable CUDA device.
c10::Device parse_device(const std::string& name);
// Throws Error when `d` is a CUDA device and no CUDA device (or not that index) is available.
void check_device(const c10::Device& d);

// A compute dtype by name: "fp32" / "float32" / "float", "fp16" / "float16" / "half", "bf16" /
// "bfloat16"; empty means fp32. Throws Error naming the bad name. (File element types, "F32" and
// so on, are io::dtype_from_name.)
c10::ScalarType parse_dtype(const std::string& name);

}  // namespace qinterp
