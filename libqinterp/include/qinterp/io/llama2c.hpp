// llama2.c checkpoints (Karpathy's run.c "legacy" export): seven int32 config values
// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
// means the classifier is not shared with the embedding), then fp32 weights in this order:
// token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
// wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim],
// w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim], freq_cis [seq, head/2] x 2 (unused),
// wcls [vocab, dim] if not shared. Matrices are [out, in] like torch.nn.Linear.
// RoPE in these files rotates adjacent pairs (q[2i], q[2i+1]).
#pragma once
#include <cstdint>
#include <string>

#include "qinterp/io/mapped_file.hpp"

namespace qinterp::io {

struct Llama2cConfig {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
          seq_len = 0;
  bool shared_classifier = true;
};

class Llama2cFile {
 public:
  // Validates the config (positive, divisible head counts) and that the file size is exactly
  // what the config implies.
  explicit Llama2cFile(const std::string& path);
  const std::string& path() const { return file_.path(); }
  const Llama2cConfig& config() const { return cfg_; }

  // Pointers into the map (fp32, layout above). Layer-stacked arrays start at layer 0.
  const float* token_embedding() const { return at_(off_.emb); }
  const float* rms_att() const { return at_(off_.rms_att); }
  const float* wq() const { return at_(off_.wq); }
  const float* wk() const { return at_(off_.wk); }
  const float* wv() const { return at_(off_.wv); }
  const float* wo() const { return at_(off_.wo); }
  const float* rms_ffn() const { return at_(off_.rms_ffn); }
  const float* w1() const { return at_(off_.w1); }
  const float* w2() const { return at_(off_.w2); }
  const float* w3() const { return at_(off_.w3); }
  const float* rms_final() const { return at_(off_.rms_final); }
  const float* wcls() const { return at_(off_.wcls); }

 private:
  struct Offsets {
    size_t emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;
  };
  const float* at_(size_t float_index) const {
    return reinterpret_cast<const float*>(file_.data() + 28) + float_index;
  }
  MappedFile file_;
  Llama2cConfig cfg_;
  Offsets off_{};
};

}  // namespace qinterp::io
