// Batch encoding for the model's batched forward: rows padded on the left (the papers' setting,
// so every row's last token sits in the last column) with a mask of the real tokens.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "qinterp/text/tokenizer.hpp"

namespace qinterp::text {

struct EncodedBatch {
  at::Tensor ids;   // [batch, max_len] int64, pad_id in the padding
  at::Tensor mask;  // [batch, max_len] bool, true = real token
};

// add_bos / add_eos default to the model's convention; pad_id defaults to the tokenizer's pad,
// else its eos, else 0 (masked out either way).
EncodedBatch encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts,
                          std::optional<bool> add_bos = std::nullopt, std::optional<bool> add_eos = std::nullopt,
                          std::optional<int64_t> pad_id = std::nullopt);

}  // namespace qinterp::text
