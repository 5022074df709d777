#include "qinterp/device.hpp"

#include <ATen/Context.h>

#include "qinterp/error.hpp"

namespace qinterp {

void check_device(const c10::Device& d) {
  if (d.is_cpu()) return;
  if (!d.is_cuda()) fail("device '", d.str(), "' is not supported (use cpu, cuda or cuda:N)");
  if (!at::hasCUDA()) fail("device '", d.str(), "' requested but no CUDA device is available to this process");
  const auto n = static_cast<int64_t>(at::getNumGPUs());
  if (d.has_index() && d.index() >= n) fail("device '", d.str(), "' requested but this process sees ", n, " CUDA device(s)");
}

c10::Device parse_device(const std::string& name) {
  c10::Device d(c10::kCPU);
  try {
    d = c10::Device(name);
  } catch (const std::exception&) {
    fail("unknown device '", name, "' (use cpu, cuda or cuda:N)");
  }
  check_device(d);
  return d;
}

c10::ScalarType parse_dtype(const std::string& s) {
  if (s.empty() || s == "fp32" || s == "float32" || s == "float") return c10::kFloat;
  if (s == "fp16" || s == "float16" || s == "half") return c10::kHalf;
  if (s == "bf16" || s == "bfloat16") return c10::kBFloat16;
  fail("unknown dtype '", s, "' (use fp32, fp16 or bf16)");
}

}  // namespace qinterp
