#include "qinterp/experiment/efficiency.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#ifdef QINTERP_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "qinterp/error.hpp"
#include "qinterp/model/model.hpp"

namespace qinterp::experiment {

namespace {

// Resets the kernel's peak-RSS mark for this process (Linux >= 4.0); false where it cannot.
bool reset_host_peak() {
  std::ofstream f("/proc/self/clear_refs");
  return f && (f << "5") && f.flush();
}

int64_t host_peak_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

void sync(const at::Tensor& t) { (void)t.to(at::kCPU); }  // a device-to-host copy waits for the queue

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Prefill `prompt`, then `steps` greedy single-token steps; returns {prefill s, decode s}.
std::pair<double, double> decode(const model::Model& m, const at::Tensor& prompt, int64_t steps) {
  model::KVCache cache = m.new_cache(1, prompt.size(1) + steps);
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor logits = m.forward_last(prompt, {}, nullptr, &cache);
  at::Tensor next = logits.select(1, 0).argmax(-1, true);  // [1, 1]
  sync(next);
  const double prefill = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) {
    logits = m.forward(next, {}, nullptr, &cache);
    next = logits.select(1, 0).argmax(-1, true);
  }
  sync(next);
  return {prefill, seconds_since(t0)};
}

}  // namespace

SpeedResult measure_speed(const model::Model& model, const SpeedOptions& o) {
  if (o.prompt_tokens < 1) fail("speed: prompt_tokens must be >= 1, got ", o.prompt_tokens);
  if (o.new_tokens < 1) fail("speed: new_tokens must be >= 1, got ", o.new_tokens);
  if (o.warmup_tokens < 0) fail("speed: warmup_tokens must be >= 0, got ", o.warmup_tokens);
  const int64_t ctx = model.config().max_seq_len;
  if (o.prompt_tokens + o.new_tokens > ctx)
    fail("speed: ", o.prompt_tokens, " prompt + ", o.new_tokens, " new tokens exceed the model's context of ", ctx);
  c10::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const at::Tensor prompt =
      at::randint(model.config().vocab_size, {1, o.prompt_tokens}, gen, at::TensorOptions().dtype(at::kLong))
          .to(model.device());
  if (o.warmup_tokens > 0) decode(model, prompt, o.warmup_tokens);
  const bool cuda = model.device().is_cuda();
  SpeedResult r;
#ifdef QINTERP_HAVE_CUDA
  if (cuda) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(model.device().index());
  }
#endif
  const bool host_reset = !cuda && reset_host_peak();
  const auto [prefill, dec] = decode(model, prompt, o.new_tokens);
  if (host_reset) r.peak_host_bytes = host_peak_bytes();
#ifdef QINTERP_HAVE_CUDA
  if (cuda) {
    const auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(model.device().index());
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    r.peak_device_allocated = st.allocated_bytes[agg].peak;
    r.peak_device_reserved = st.reserved_bytes[agg].peak;
  }
#endif
  r.weight_bytes = model.parameter_bytes();
  r.head_q8_bytes = model.compact_head_bytes();
  r.parameters = model.num_parameters();
  r.prompt_tokens = o.prompt_tokens;
  r.new_tokens = o.new_tokens;
  r.prefill_seconds = prefill;
  r.decode_seconds = dec;
  r.decode_tokens_per_second = static_cast<double>(o.new_tokens) / dec;
  return r;
}

}  // namespace qinterp::experiment
