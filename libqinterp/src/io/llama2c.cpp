#include "qinterp/io/llama2c.hpp"

namespace qinterp::io {

Llama2cFile::Llama2cFile(const std::string& path) : file_(path) {
  ByteReader r(file_.data(), file_.size(), path);
  if (file_.size() >= 4 && std::memcmp(file_.data(), "ak42", 4) == 0)
    fail(path, ": llama2.c version-1/2 export (magic \"ak42\"); qinterp reads the legacy export "
               "(export.py --version 0)");
  int32_t v[7];
  for (int32_t& x : v) x = r.read<int32_t>("llama2.c config header");
  cfg_.dim = v[0];
  cfg_.hidden_dim = v[1];
  cfg_.n_layers = v[2];
  cfg_.n_heads = v[3];
  cfg_.n_kv_heads = v[4];
  cfg_.shared_classifier = v[5] > 0;
  cfg_.vocab_size = v[5] < 0 ? -v[5] : v[5];
  cfg_.seq_len = v[6];
  const Llama2cConfig& c = cfg_;
  auto bad = [&](const char* what) {
    fail(path, ": invalid llama2.c config (", what, "): dim=", c.dim, " hidden=", c.hidden_dim,
         " layers=", c.n_layers, " heads=", c.n_heads, " kv_heads=", c.n_kv_heads,
         " vocab=", c.vocab_size, " seq_len=", c.seq_len);
  };
  constexpr int32_t kBig = 1 << 20;
  if (c.dim <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
      c.vocab_size <= 0 || c.seq_len <= 0)
    bad("values must be positive");
  if (c.dim > kBig || c.hidden_dim > kBig || c.n_layers > 4096 || c.vocab_size > kBig * 4 || c.seq_len > kBig)
    bad("values are implausibly large");
  if (c.dim % c.n_heads != 0 || (c.dim / c.n_heads) % 2 != 0) bad("dim must split into even-sized heads");
  if (c.n_heads % c.n_kv_heads != 0) bad("heads must be a multiple of kv_heads");

  const size_t dim = c.dim, hid = c.hidden_dim, L = c.n_layers, V = c.vocab_size;
  const size_t kv_dim = dim / c.n_heads * c.n_kv_heads, head = dim / c.n_heads;
  size_t o = 0;
  auto take = [&](size_t n) { size_t at = o; o += n; return at; };
  off_.emb = take(V * dim);
  off_.rms_att = take(L * dim);
  off_.wq = take(L * dim * dim);
  off_.wk = take(L * kv_dim * dim);
  off_.wv = take(L * kv_dim * dim);
  off_.wo = take(L * dim * dim);
  off_.rms_ffn = take(L * dim);
  off_.w1 = take(L * hid * dim);
  off_.w2 = take(L * dim * hid);
  off_.w3 = take(L * hid * dim);
  off_.rms_final = take(dim);
  take(c.seq_len * head);  // freq_cis_real and _imag, [seq, head/2] each; unused (RoPE recomputed)
  off_.wcls = c.shared_classifier ? off_.emb : take(V * dim);
  const size_t expect = 28 + o * sizeof(float);
  if (file_.size() != expect)
    fail(path, ": file has ", file_.size(), " bytes but its config (dim=", c.dim, ", layers=",
         c.n_layers, ", vocab=", c.vocab_size, c.shared_classifier ? ", shared" : ", separate",
         " classifier) needs exactly ", expect, (file_.size() < expect ? "; the file is truncated" : ""));
}

}  // namespace qinterp::io
