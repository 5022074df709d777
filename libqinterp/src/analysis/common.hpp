// Helpers shared by the analysis accumulators (not installed).
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "qinterp/analysis/accumulator.hpp"
#include "qinterp/error.hpp"

namespace qinterp::analysis::detail {

// fp16/bf16 activations widened to fp32; fp32/fp64 as they are; anything else is refused.
at::Tensor widen(const at::Tensor& x, const std::string& who);

// Throws Error naming the first non-finite element of x [T, N] when `summary` (a reduction of
// x that NaN/Inf propagate into) is not all finite. `first_token` numbers x's first row.
void check_finite(const at::Tensor& summary, const at::Tensor& x, const std::string& who, const std::string& label,
                  int64_t first_token);

// Column sums [N] in float64 of x [T, N] without a float64 copy of x: float32 partial sums over
// blocks of 64 rows (error ~1e-7 of the block's magnitude), added up in float64.
at::Tensor colsum64(const at::Tensor& x);

// State helpers.
at::Tensor scalar(double v);
at::Tensor scalar(int64_t v);
const at::Tensor& need(const State& s, const std::string& kind, const std::string& name);
// Checked reads of a saved state (a file may be damaged or come from elsewhere): each throws
// Error naming the analysis, the entry and what was expected.
//   need_count: one integer >= 0 (an integer dtype); need_number: one real number;
//   need_array: `dims` sizes (-1 = any), an integer dtype when `as` is an integer type, a
//   floating one when it is floating; returned as a contiguous copy of type `as`, on the CPU;
//   counts (integer `as`) must be >= 0.
// Whether any of `names` is in the state: the optional parts of a state (absent until data came)
// are all there or all missing, and need_array reports the missing ones.
bool has_any(const State& s, std::initializer_list<const char*> names);
int64_t need_count(const State& s, const std::string& kind, const std::string& name);
double need_number(const State& s, const std::string& kind, const std::string& name);
at::Tensor need_array(const State& s, const std::string& kind, const std::string& name,
                      const std::vector<int64_t>& dims, at::ScalarType as);
void check_kind(const State& s, const std::string& kind);
void same_setting(const char* kind, const char* what, double mine, double theirs);
// `t` on `device` (undefined stays undefined).
at::Tensor on(const at::Tensor& t, const at::Device& device);
// Chan et al.: folds (nb, mean_b, m2_b) into (na, mean_a, m2_a) in place (float64 tensors).
void chan_merge(int64_t na, at::Tensor& mean_a, at::Tensor& m2_a, int64_t nb, const at::Tensor& mean_b,
                const at::Tensor& m2_b);

}  // namespace qinterp::analysis::detail
