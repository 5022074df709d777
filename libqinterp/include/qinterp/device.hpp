// Devices by name: "cpu", "cuda", "cuda:N". Everything that moves a model or an analysis goes
// through these, so that asking for a GPU this process cannot use is a qinterp::Error saying so,
// not a torch error from deep inside (or a silent fallback).
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace qinterp {

// Throws Error for a malformed name or an unusable CUDA device.
c10::Device parse_device(const std::string& name);
// Throws Error when `d` is a CUDA device and no CUDA device (or not that index) is available.
void check_device(const c10::Device& d);

}  // namespace qinterp
