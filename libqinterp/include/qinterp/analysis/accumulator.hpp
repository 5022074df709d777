// What every streaming analysis shares. An analysis is an accumulator: update() on batches,
// merge() with another of its kind (shards over processes or machines combine exactly), state()
// and restore() to stop and resume, finalize() for the result. Memory does not grow with the
// number of tokens seen, except in Calibration (one confidence and one bit per example).
//
// Activations come as [tokens, neurons] or [batch, seq, neurons] with an optional mask
// [batch, seq] (bool or 0/1; true = real token, false = padding), on any device; an analysis
// keeps its state on the device of the first update (move it with to()). Sums are kept in
// float64 where float32 would drift over millions of tokens.
//
// Non-finite activations (NaN, ±Inf) are refused: update() throws qinterp::Error naming the
// analysis's label (usually the hook point), the token (counted from the first update) and the
// neuron, and leaves the state as it was before the call.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "qinterp/state.hpp"

namespace qinterp::analysis {

using qinterp::State;
using qinterp::Tensors;

class Accumulator {
 public:
  virtual ~Accumulator() = default;
  virtual std::string kind() const = 0;
  // Folds in another accumulator of the same kind and settings (throws Error otherwise).
  virtual void merge(const Accumulator& other) = 0;
  virtual State state() const = 0;
  virtual void restore(const State& s) = 0;
  virtual Tensors finalize() const = 0;
  // Moves the state to a device ("cpu", "cuda:0").
  virtual void to(const at::Device& device) = 0;

  // The name used in error messages (the hook point, e.g. "blocks.3.mlp.hook_act").
  void set_label(std::string label) { label_ = std::move(label); }
  const std::string& label() const { return label_; }

 protected:
  std::string label_;
};

// Flattens [B, S, N] (+ mask [B, S]) or [T, N] (+ mask [T]) to the real tokens [T', N].
// `who` names the caller in errors about shapes.
at::Tensor real_tokens(const at::Tensor& act, const at::Tensor& mask, const std::string& who);

}  // namespace qinterp::analysis
