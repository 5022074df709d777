// Decoding speed and memory of a loaded model, as paper 2 measures them (PROTOCOLS.md §2.1):
// batch 1, a prompt of `prompt_tokens`, `new_tokens` generated greedily with EOS ignored, after a
// warm-up, with the device synchronised around each timer.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace qinterp::model {
class Model;
}

namespace qinterp::experiment {

struct SpeedOptions {
  int64_t prompt_tokens = 256;
  int64_t new_tokens = 512;
  int64_t warmup_tokens = 8;  // a short untimed prefill + decode first (allocator, caches, kernels)
  uint64_t seed = 0;          // the prompt's random token ids
};

struct SpeedResult {
  int64_t weight_bytes = 0;        // storage of every parameter as loaded (Model::parameter_bytes)
  int64_t head_q8_bytes = 0;       // the LM head's exact Q8_0 copy decoding reads, beside the weights
                                   // (Model::compact_head_bytes; 0 when there is none)
  int64_t parameters = 0;          // weights counted as values, not storage elements
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_seconds = 0;      // the prompt's forward pass, which also yields the first new token
  double decode_seconds = 0;       // new_tokens single-token steps through the KV cache
  double decode_tokens_per_second = 0;  // new_tokens / decode_seconds
  // Peak memory over the timed run (from a reset just before it). CPU: the process's resident set
  // (VmHWM), which includes the weights and everything else the process holds; -1 if the kernel
  // cannot reset it. CUDA: the caching allocator's peak allocated and reserved bytes; -1 on the CPU.
  int64_t peak_host_bytes = -1, peak_device_allocated = -1, peak_device_reserved = -1;
};

// The prompt is `prompt_tokens` random ids in [0, vocab) (seeded): the speed of a dense
// transformer does not depend on which tokens it reads.
SpeedResult measure_speed(const model::Model& model, const SpeedOptions& opts = {});

}  // namespace qinterp::experiment
