#include "qinterp/text/tokenizer.hpp"

#include <cstdio>

#include "qinterp/error.hpp"
#include "qinterp/io/mapped_file.hpp"
#include "../io/paths.hpp"

namespace qinterp::text {

Llama2cTokenizer::Llama2cTokenizer(const std::string& path) : path_(path) {
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
  if (id < 0 || id >= vocab_size()) fail(path_, ": token id ", id, " is outside the vocabulary of ", vocab_size());
  return pieces_[static_cast<size_t>(id)];
}

std::vector<int64_t> Llama2cTokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  // As run.c: a dummy-prefix space, then one token per UTF-8 code point (bytes when the code
  // point is not in the vocabulary), then repeatedly merge the adjacent pair whose merged
  // string has the highest score (leftmost on ties) until no pair merges.
  std::vector<int64_t> ids;
  if (add_bos) ids.push_back(bos_id());
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
  std::string buf;
  while (true) {
    float best = -1e10f;
    int64_t best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      buf = pieces_[t[i]];
      buf += pieces_[t[i + 1]];
      const int64_t id = find(buf);
      if (id >= 0 && scores_[id] > best) {
        best = scores_[id];
        best_id = id;
        best_i = i;
      }
    }
    if (best_id < 0) break;
    t[best_i] = best_id;
    t.erase(t.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
  }
  ids.insert(ids.end(), t.begin(), t.end());
  if (add_eos) ids.push_back(eos_id());
  return ids;
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

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (!io::paths::exists(path)) fail(path, ": no such file");
  if (io::paths::ends_with(path, ".bin")) return std::make_unique<Llama2cTokenizer>(path);
  fail(path, ": tokenizer format not supported yet (this release reads llama2.c tokenizer.bin files)");
}

}  // namespace qinterp::text
