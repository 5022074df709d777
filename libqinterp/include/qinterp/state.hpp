// Named tensors and saved states: the values every layer passes around (analyses produce them,
// the result store writes and reads them, the runner checkpoints them). Kept here, beside
// error.hpp, so that io does not depend on analysis.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

namespace qinterp {

// Named tensors: a result (scalars are 0-dim tensors) or a saved state.
using Tensors = std::map<std::string, at::Tensor>;

// A saved accumulator: its kind ("DeadNeurons", ...) and every tensor needed to continue,
// including its settings (restore() refuses a state whose settings differ).
struct State {
  std::string kind;
  Tensors tensors;
};

}  // namespace qinterp
