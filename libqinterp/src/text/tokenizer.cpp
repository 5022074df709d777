#include "qinterp/text/tokenizer.hpp"

#include <ATen/ATen.h>
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <queue>

#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/io/mapped_file.hpp"
#include "qinterp/text/batch.hpp"
#include "qinterp/io/paths.hpp"

namespace qinterp::text {

// --- the shared interface -------------------------------------------------------------------

void Tokenizer::check_id(int64_t id) const {
  if (id < 0 || id >= vocab_size()) fail(source_, ": token id ", id, " is outside the vocabulary of ", vocab_size());
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const { return encode(text, add_bos_, add_eos_); }

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  if (add_bos && bos_ < 0) fail(source_, ": a BOS token was asked for but this vocabulary has none");
  if (add_eos && eos_ < 0) fail(source_, ": an EOS token was asked for but this vocabulary has none");
  std::vector<int64_t> t = tokenize(text);
  if (!add_bos && !add_eos) return t;
  std::vector<int64_t> ids;
  ids.reserve(t.size() + 2);
  if (add_bos) ids.push_back(bos_);
  ids.insert(ids.end(), t.begin(), t.end());
  if (add_eos) ids.push_back(eos_);
  return ids;
}

EncodedBatch encode_batch(const Tokenizer& tok, const std::vector<std::string>& texts, std::optional<bool> add_bos,
                          std::optional<bool> add_eos, std::optional<int64_t> pad_id) {
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(texts.size());
  size_t width = 0;
  for (const auto& t : texts) {
    rows.push_back(tok.encode(t, add_bos.value_or(tok.add_bos_default()), add_eos.value_or(tok.add_eos_default())));
    width = std::max(width, rows.back().size());
  }
  const int64_t pad = pad_id ? *pad_id : tok.pad_id() >= 0 ? tok.pad_id() : tok.eos_id() >= 0 ? tok.eos_id() : 0;
  const auto B = static_cast<int64_t>(rows.size()), L = static_cast<int64_t>(width);
  EncodedBatch b{at::full({B, L}, pad, at::kLong), at::zeros({B, L}, at::kBool)};
  auto* ids = b.ids.data_ptr<int64_t>();
  auto* mask = b.mask.data_ptr<bool>();
  for (int64_t r = 0; r < B; ++r) {
    const auto& row = rows[static_cast<size_t>(r)];
    const int64_t off = r * L + L - static_cast<int64_t>(row.size());
    std::copy(row.begin(), row.end(), ids + off);
    std::fill(mask + off, mask + off + row.size(), true);
  }
  return b;
}

// --- llama2.c ---------------------------------------------------------------------------------

Llama2cTokenizer::Llama2cTokenizer(const std::string& path) {
  source_ = path;
  bos_ = 1, eos_ = 2, unk_ = 0, add_bos_ = true;
  io::MappedFile f(path);
  io::ByteReader r(f.data(), f.size(), path);
  const int32_t max_len = r.read<int32_t>("max_token_length");
  if (max_len <= 0 || max_len > 1 << 16) fail(path, ": max_token_length ", max_len, " is not plausible");
  while (r.remaining() > 0) {
    const float score = r.read<float>("token score");
    const int32_t len = r.read<int32_t>("token length");
    if (len < 0 || len > max_len)
      fail(path, ": token ", pieces_.size(), " has length ", len, " (max_token_length is ", max_len, ")");
    pieces_.push_back(r.read_string(static_cast<size_t>(len), "token bytes"));
    scores_.push_back(score);
  }
  if (pieces_.size() < 3 + 256)
    fail(path, ": only ", pieces_.size(), " tokens; a llama2.c vocabulary has unk, bos, eos and 256 byte pieces");
  for (size_t i = 0; i < pieces_.size(); ++i) lookup_.emplace(pieces_[i], static_cast<int64_t>(i));
  // Byte-fallback pieces <0x00>..<0xFF> follow the three specials in these vocabularies.
  if (pieces_[3] != "<0x00>" || pieces_[258] != "<0xFF>")
    fail(path, ": ids 3..258 are not the byte pieces <0x00>..<0xFF>");
}

int64_t Llama2cTokenizer::find(const std::string& s) const {
  auto it = lookup_.find(s);
  return it == lookup_.end() ? -1 : it->second;
}

const std::string& Llama2cTokenizer::piece(int64_t id) const {
  check_id(id);
  return pieces_[static_cast<size_t>(id)];
}

std::vector<int64_t> Llama2cTokenizer::tokenize(const std::string& text) const {
  // As run.c: a dummy-prefix space, then one token per UTF-8 code point (bytes when the code
  // point is not in the vocabulary), then repeatedly merge the adjacent pair whose merged
  // string has the highest score (leftmost on ties) until no pair merges.
  std::vector<int64_t> t;
  if (!text.empty()) {
    const int64_t sp = find(" ");
    if (sp >= 0) t.push_back(sp);
  }
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    // Gather continuation bytes (10xxxxxx) of this code point, at most 4 bytes in all.
    while (j < n && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
    const int64_t id = find(text.substr(i, j - i));
    if (id >= 0) {
      t.push_back(id);
    } else {
      for (size_t k = i; k < j; ++k) t.push_back(static_cast<unsigned char>(text[k]) + byte_base_);
    }
    i = j;
  }
  // run.c rescans every pair for each merge (quadratic: hours for a 1 MB text). The same merges
  // come from a heap of candidate pairs ordered by (score, leftmost), entries checked on use:
  // a symbol's id only ever grows into a longer piece, so a stale entry never matches again.
  const size_t m = t.size();
  std::vector<int64_t> next(m), prev(m);
  for (size_t i = 0; i < m; ++i) next[i] = static_cast<int64_t>(i) + 1, prev[i] = static_cast<int64_t>(i) - 1;
  struct Cand {
    float score;
    int64_t left, left_id, right_id, merged;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Cand> heap;
  std::string buf;
  const auto offer = [&](int64_t l) {
    if (l < 0 || next[l] >= static_cast<int64_t>(m)) return;
    const int64_t r = next[l];
    buf = pieces_[t[l]];
    buf += pieces_[t[r]];
    const int64_t id = find(buf);
    if (id >= 0 && scores_[id] > -1e10f) heap.push({scores_[id], l, t[l], t[r], id});
  };
  for (size_t i = 0; i + 1 < m; ++i) offer(static_cast<int64_t>(i));
  std::vector<bool> alive(m, true);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int64_t l = c.left, r = next[l];
    if (!alive[l] || r >= static_cast<int64_t>(m) || t[l] != c.left_id || t[r] != c.right_id) continue;
    t[l] = c.merged;
    alive[r] = false;
    next[l] = next[r];
    if (next[r] < static_cast<int64_t>(m)) prev[next[r]] = l;
    offer(prev[l]);
    offer(l);
  }
  std::vector<int64_t> out;
  out.reserve(m);
  for (int64_t i = m ? 0 : -1; i >= 0 && i < static_cast<int64_t>(m); i = next[i]) out.push_back(t[i]);
  return out;
}

std::string Llama2cTokenizer::decode_piece(int64_t prev, int64_t id) const {
  const std::string& p = piece(id);
  if (id >= byte_base_ && id < byte_base_ + 256) return std::string(1, static_cast<char>(id - byte_base_));
  if (prev == bos_id() && !p.empty() && p[0] == ' ') return p.substr(1);
  return p;
}

std::string Llama2cTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  int64_t prev = -1;
  for (int64_t id : ids) {
    if (id == bos_id() || id == eos_id()) {
      prev = id;
      continue;
    }
    out += decode_piece(prev < 0 ? bos_id() : prev, id);  // a text's first piece drops its space
    prev = id;
  }
  return out;
}

// --- picking the format from the path -------------------------------------------------------

namespace {

std::vector<std::string> gguf_files_in(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (io::paths::ends_with(n, ".gguf")) out.push_back(io::paths::join(dir, n));
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  using io::paths::ends_with;
  if (!io::paths::exists(path)) fail(path, ": no such file");
  if (io::paths::is_dir(path)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      const std::string p = io::paths::join(path, name);
      if (io::paths::exists(p)) return load_tokenizer(p);
    }
    const auto ggufs = gguf_files_in(path);
    if (ggufs.size() == 1) return load_tokenizer(ggufs[0]);
    fail(path, ": directory has no tokenizer.json, tokenizer.model or tokenizer.bin",
         ggufs.empty() ? " and no .gguf file" : " and more than one .gguf file (name the one to use)");
  }
  if (ends_with(path, ".json")) return std::make_unique<BpeTokenizer>(path);
  if (ends_with(path, ".model")) return std::make_unique<SentencePieceTokenizer>(path);
  if (ends_with(path, ".gguf")) return load_gguf_tokenizer(io::GgufFile(path));
  if (ends_with(path, ".bin")) return std::make_unique<Llama2cTokenizer>(path);
  fail(path, ": unknown tokenizer format (expected a directory, tokenizer.json, a SentencePiece .model, "
       "a .gguf or a llama2.c tokenizer.bin)");
}

std::string find_tokenizer(const std::string& model) {
  namespace paths = io::paths;
  if (paths::ends_with(model, ".gguf") || paths::is_dir(model)) return model;
  const std::string dir = paths::parent(model);
  for (const char* n : {"tokenizer.json", "tokenizer.model", "tokenizer.bin", "tok512.bin"})
    if (paths::exists(paths::join(dir, n))) return paths::join(dir, n);
  fail("no tokenizer found beside ", model, " (looked for tokenizer.json, tokenizer.model, tokenizer.bin, tok512.bin); "
       "pass one (--tokenizer PATH)");
}

void check_tokenizer(const Tokenizer& tok, int64_t model_vocab, const std::string& model_path) {
  const int64_t v = tok.vocab_size();
  const auto mismatch = [&](const std::string& why) {
    fail("tokenizer ", tok.source(), " does not belong to model ", model_path, ": ", why,
         " (pass the model's own tokenizer with --tokenizer)");
  };
  if (v > model_vocab) mismatch(std::to_string(v) + " token ids, the model has " + std::to_string(model_vocab));
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"BOS", tok.bos_id()}, {"EOS", tok.eos_id()}, {"pad", tok.pad_id()}})
    if (id >= model_vocab) mismatch(std::string(name) + " id " + std::to_string(id) + " is beyond the model's " + std::to_string(model_vocab));
  if (model_vocab - v > std::max<int64_t>(256, model_vocab / 64))
    mismatch(std::to_string(v) + " token ids against the model's " + std::to_string(model_vocab));
}

}  // namespace qinterp::text
