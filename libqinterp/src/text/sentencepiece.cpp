// SentencePiece BPE: the .model protobuf read without libprotobuf, and encoding as sentencepiece's
// bpe_model does it (docs/tokenizers.md says why we do not link libsentencepiece).
#include <algorithm>
#include <cstring>
#include <functional>
#include <unordered_map>
#include <queue>

#include <unicode/utf8.h>

#include "qinterp/error.hpp"
#include "qinterp/io/mapped_file.hpp"
#include "qinterp/text/tokenizer.hpp"
#include "unicode.hpp"
#include "word_cache.hpp"

namespace qinterp::text {

namespace {

// --- a bounds-checked reader of the protobuf wire format (only what ModelProto uses) ----------

struct Wire {
  const uint8_t* p;
  const uint8_t* end;
  const std::string* file;
  const char* what;

  [[noreturn]] void bad(const char* why) const { fail(*file, ": malformed SentencePiece model (", why, " in ", what, ")"); }
  bool done() const { return p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad("truncated varint");
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint longer than 10 bytes");
  }
  Wire sub() {  // a length-delimited field as its own reader
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end - p)) bad("field length past the end");
    Wire w{p, p + n, file, what};
    p += n;
    return w;
  }
  std::string bytes() {
    Wire w = sub();
    return std::string(reinterpret_cast<const char*>(w.p), static_cast<size_t>(w.end - w.p));
  }
  float f32() {
    if (end - p < 4) bad("truncated float");
    float f;
    std::memcpy(&f, p, 4);
    p += 4;
    return f;
  }
  void skip(uint32_t wt) {
    switch (wt) {
      case 0: varint(); break;
      case 1: if (end - p < 8) bad("truncated fixed64"); p += 8; break;
      case 2: sub(); break;
      case 5: if (end - p < 4) bad("truncated fixed32"); p += 4; break;
      default: bad("unknown wire type");
    }
  }
};

SentencePieceModel read_model_proto(const std::string& path) {
  io::MappedFile f(path);
  SentencePieceModel m;
  Wire top{f.data(), f.data() + f.size(), &path, "ModelProto"};
  int32_t model_type = 1;  // proto2 defaults where the field is absent
  bool treat_ws_as_suffix = false;
  std::string normalizer = "nmt_nfkc", charsmap;
  int64_t unk = 0, bos = 1, eos = 2, pad = -1;
  while (!top.done()) {
    const uint64_t key = top.varint();
    const uint32_t field = static_cast<uint32_t>(key >> 3), wt = key & 7;
    if (field == 1 && wt == 2) {  // SentencePiece { piece = 1, score = 2, type = 3 }
      Wire w = top.sub();
      w.what = "a piece";
      std::string piece;
      float score = 0;
      int32_t type = 1;
      while (!w.done()) {
        const uint64_t k = w.varint();
        const uint32_t fl = static_cast<uint32_t>(k >> 3), t = k & 7;
        if (fl == 1 && t == 2) piece = w.bytes();
        else if (fl == 2 && t == 5) score = w.f32();
        else if (fl == 3 && t == 0) type = static_cast<int32_t>(w.varint());
        else w.skip(t);
      }
      if (type < 1 || type > 6) fail(path, ": piece ", m.pieces.size(), " has unknown type ", type);
      m.pieces.push_back(std::move(piece));
      m.scores.push_back(score);
      m.types.push_back(static_cast<TokenType>(type));
    } else if (field == 2 && wt == 2) {  // TrainerSpec
      Wire w = top.sub();
      w.what = "trainer_spec";
      while (!w.done()) {
        const uint64_t k = w.varint();
        const uint32_t fl = static_cast<uint32_t>(k >> 3), t = k & 7;
        if (fl == 44 && t == 2) {
          m.unk_surface = w.bytes();
          continue;
        }
        if (t != 0) { w.skip(t); continue; }
        const auto v = static_cast<int64_t>(static_cast<int32_t>(w.varint()));  // int32 fields, negatives sign-extended
        switch (fl) {
          case 3: model_type = static_cast<int32_t>(v); break;
          case 24: treat_ws_as_suffix = v != 0; break;
          case 35: m.byte_fallback = v != 0; break;
          case 40: unk = v; break;
          case 41: bos = v; break;
          case 42: eos = v; break;
          case 43: pad = v; break;
          default: break;
        }
      }
    } else if (field == 3 && wt == 2) {  // NormalizerSpec
      Wire w = top.sub();
      w.what = "normalizer_spec";
      while (!w.done()) {
        const uint64_t k = w.varint();
        const uint32_t fl = static_cast<uint32_t>(k >> 3), t = k & 7;
        if (fl == 1 && t == 2) normalizer = w.bytes();
        else if (fl == 2 && t == 2) charsmap = w.bytes();
        else if (fl == 3 && t == 0) m.add_dummy_prefix = w.varint() != 0;
        else if (fl == 4 && t == 0) m.remove_extra_whitespaces = w.varint() != 0;
        else if (fl == 5 && t == 0) m.escape_whitespaces = w.varint() != 0;
        else w.skip(t);
      }
    } else {
      top.skip(wt);
    }
  }
  if (m.pieces.empty()) fail(path, ": not a SentencePiece model (no pieces)");
  if (model_type != 2)
    fail(path, ": SentencePiece model type ", model_type == 1 ? "unigram" : std::to_string(model_type),
         " is not supported (qinterp reads BPE models: Llama-2, Mistral)");
  if (treat_ws_as_suffix) fail(path, ": treat_whitespace_as_suffix models are not supported");
  if (!charsmap.empty())
    fail(path, ": normalizer '", normalizer, "' uses a precompiled character map, which is not supported "
         "(Llama-2 and Mistral use 'identity')");
  // What sentencepiece refuses to load.
  if (std::count(m.types.begin(), m.types.end(), TokenType::Unknown) > 1)
    fail(path, ": more than one piece has the unknown type");
  if (!m.byte_fallback && std::count(m.types.begin(), m.types.end(), TokenType::Byte) > 0)
    fail(path, ": byte pieces (<0xNN>) although byte_fallback is off");
  const auto n = static_cast<int64_t>(m.pieces.size());
  const auto in_range = [&](int64_t id) { return id >= 0 && id < n ? id : -1; };
  m.unk = in_range(unk), m.bos = in_range(bos), m.eos = in_range(eos), m.pad = in_range(pad);
  return m;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : m_(read_model_proto(path)) {
  source_ = path;
  init();
}

SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceModel model, const std::string& source)
    : m_(std::move(model)) {
  source_ = source;
  init();
}

void SentencePieceTokenizer::init() {
  const size_t n = m_.pieces.size();
  if (m_.scores.size() != n || m_.types.size() != n)
    fail(source_, ": ", n, " pieces but ", m_.scores.size(), " scores and ", m_.types.size(), " types");
  std::fill(std::begin(byte_id_), std::end(byte_id_), -1);
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = m_.types[i];
    if (t == TokenType::Normal || t == TokenType::UserDefined || t == TokenType::Unused) {
      if (!normal_.emplace(m_.pieces[i], static_cast<int64_t>(i)).second)
        fail(source_, ": piece '", m_.pieces[i], "' appears twice (ids ", normal_[m_.pieces[i]], " and ", i, ")");
      if (t == TokenType::UserDefined && !m_.pieces[i].empty()) user_defined_.push_back(m_.pieces[i]);
    } else if (t == TokenType::Byte) {
      const int b = utf8::parse_byte_piece(m_.pieces[i]);
      if (b < 0) fail(source_, ": byte piece ", i, " is '", m_.pieces[i], "', not <0xNN>");
      byte_id_[b] = static_cast<int64_t>(i);
    } else if (t == TokenType::Unknown && m_.unk < 0) {
      m_.unk = static_cast<int64_t>(i);
    }
  }
  if (m_.byte_fallback)
    for (int b = 0; b < 256; ++b)
      if (byte_id_[b] < 0) fail(source_, ": byte_fallback is on but the byte piece <0x", std::hex, b, "> is missing");
  for (const auto& u : user_defined_) user_defined_first_[static_cast<unsigned char>(u[0])] = true;
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  // Merging word by word (and caching words) is exact when no piece that merging can produce has
  // a space after another character: then no merge crosses the start of a word.
  const std::string ws = m_.escape_whitespaces ? utf8::kMetaspace : " ";
  split_words_ = true;
  for (const auto& [p, id] : normal_) {
    (void)id;
    for (size_t k = p.find(ws, 1); k != std::string::npos && split_words_; k = p.find(ws, k + 1))
      if (k < ws.size() || p.compare(k - ws.size(), ws.size(), ws) != 0) split_words_ = false;
  }
  cache_ = std::make_shared<WordCache>();
  bos_ = m_.bos, eos_ = m_.eos, pad_ = m_.pad, unk_ = m_.unk;
  add_bos_ = m_.add_bos && bos_ >= 0;
  add_eos_ = m_.add_eos && eos_ >= 0;
}

const std::string& SentencePieceTokenizer::piece(int64_t id) const {
  check_id(id);
  return m_.pieces[static_cast<size_t>(id)];
}

void SentencePieceTokenizer::append_ids(const std::string& piece, std::vector<int64_t>& out) const {
  auto it = normal_.find(piece);
  if (it != normal_.end()) {
    out.push_back(it->second);
  } else if (m_.byte_fallback) {
    for (unsigned char c : piece) out.push_back(byte_id_[c]);
  } else {
    if (m_.unk < 0) fail(source_, ": text has a character outside the vocabulary and the model has no unk piece");
    out.push_back(m_.unk);
  }
}

std::vector<int64_t> SentencePieceTokenizer::tokenize(const std::string& text) const {
  const std::string clean = utf8::sanitize(text);
  std::vector<int64_t> out;
  out.reserve(clean.size() / 3 + 4);
  if (!m_.user_defined_in_raw_text || user_defined_.empty()) {
    encode_segment(clean, true, out);
    // sentencepiece makes a run of unknown pieces one (its PopulateSentencePieceText).
    if (!m_.user_defined_in_raw_text && m_.unk >= 0)
      out.erase(std::unique(out.begin(), out.end(), [&](int64_t a, int64_t b) { return a == m_.unk && b == m_.unk; }),
                out.end());
    return out;
  }
  // Raw-text user-defined pieces first (longest match at each position), the rest between them.
  size_t b = 0;
  for (size_t p = 0; p < clean.size();) {
    const std::string* hit = nullptr;
    if (!user_defined_first_[static_cast<unsigned char>(clean[p])]) {
      ++p;
      continue;
    }
    for (const auto& u : user_defined_)  // longest first
      if (clean.compare(p, u.size(), u) == 0) {
        hit = &u;
        break;
      }
    if (!hit) {
      ++p;
      continue;
    }
    if (p > b) encode_segment(clean.substr(b, p - b), b == 0, out);
    out.push_back(normal_.at(*hit));
    p += hit->size();
    b = p;
  }
  if (b < clean.size()) encode_segment(clean.substr(b), b == 0, out);
  return out;
}

void SentencePieceTokenizer::encode_segment(const std::string& clean, bool at_start, std::vector<int64_t>& out) const {
  // Normalize as sentencepiece's identity normalizer: malformed bytes -> U+FFFD (done by the
  // caller), optional whitespace clean-up, the dummy prefix, spaces -> "▁".
  const std::string ws = m_.escape_whitespaces ? utf8::kMetaspace : " ";
  std::string s;
  s.reserve(clean.size() + 8);
  size_t i = 0;
  if (m_.remove_extra_whitespaces) while (i < clean.size() && clean[i] == ' ') ++i;
  if (i == clean.size()) return;
  if (m_.add_dummy_prefix && at_start) s += ws;
  bool prev_space = m_.remove_extra_whitespaces;
  for (; i < clean.size(); ++i) {
    const char c = clean[i];
    if (c == ' ') {
      if (!(prev_space && m_.remove_extra_whitespaces)) s += ws;
      prev_space = true;
    } else {
      s += c;
      prev_space = false;
    }
  }
  if (m_.remove_extra_whitespaces)
    while (s.size() >= ws.size() && s.compare(s.size() - ws.size(), ws.size(), ws) == 0) s.resize(s.size() - ws.size());

  if (!split_words_) {
    merge_word(s, out);
    return;
  }
  // Words start at a space that follows another character ("▁the", "▁▁▁indent").
  std::string word;
  size_t b = 0;
  const auto flush = [&](size_t e) {
    if (e <= b) return;
    word.assign(s, b, e - b);
    if (cache_->get(word, out)) return;
    const size_t before = out.size();
    merge_word(word, out);
    cache_->put(word, out.data() + before, out.size() - before);
  };
  for (size_t k = s.find(ws, 1); k != std::string::npos; k = s.find(ws, k + ws.size())) {
    if (k >= ws.size() && s.compare(k - ws.size(), ws.size(), ws) == 0) continue;
    flush(k);
    b = k;
  }
  flush(s.size());
}

// sentencepiece's bpe_model on one string: characters (user-defined pieces whole), merges by
// score, unused pieces split back, unknown characters as bytes or unk.
void SentencePieceTokenizer::merge_word(const std::string& s, std::vector<int64_t>& out) const {
  // Symbols: one per character, a user-defined piece as one frozen symbol.
  struct Sym {
    size_t start, len;
    int prev, next;
    bool frozen;
  };
  std::vector<Sym> sym;
  for (size_t p = 0; p < s.size();) {
    size_t len = 0;
    bool frozen = false;
    for (const auto& u : user_defined_)
      if (s.compare(p, u.size(), u) == 0) {
        len = u.size(), frozen = true;
        break;
      }
    if (!len) len = utf8::lead_len(s, p);
    const int idx = static_cast<int>(sym.size());
    sym.push_back({p, len, idx - 1, -1, frozen});
    if (idx > 0) sym[static_cast<size_t>(idx - 1)].next = idx;
    p += len;
  }

  // Candidate merges: highest score first, then leftmost. A candidate is stale when either side
  // has changed since it was queued (its total length no longer matches).
  struct Pair {
    float score;
    int left, right;
    size_t len;
  };
  const auto worse = [](const Pair& a, const Pair& b) { return a.score < b.score || (a.score == b.score && a.left > b.left); };
  std::priority_queue<Pair, std::vector<Pair>, decltype(worse)> agenda(worse);
  std::unordered_map<std::string, std::pair<std::string, std::string>> rev_merge;  // unused pieces to split back
  std::string buf;
  const auto try_pair = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const Sym& a = sym[static_cast<size_t>(l)];
    const Sym& b = sym[static_cast<size_t>(r)];
    if (a.frozen || b.frozen) return;
    buf.assign(s, a.start, a.len + b.len);
    auto it = normal_.find(buf);
    if (it == normal_.end()) return;
    agenda.push({m_.scores[static_cast<size_t>(it->second)], l, r, a.len + b.len});
    if (m_.types[static_cast<size_t>(it->second)] == TokenType::Unused)
      rev_merge[buf] = {s.substr(a.start, a.len), s.substr(b.start, b.len)};
  };
  for (size_t k = 1; k < sym.size(); ++k) try_pair(static_cast<int>(k - 1), static_cast<int>(k));
  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Sym& a = sym[static_cast<size_t>(top.left)];
    Sym& b = sym[static_cast<size_t>(top.right)];
    if (a.len == 0 || b.len == 0 || a.len + b.len != top.len || a.next != top.right) continue;
    a.len += b.len;
    a.next = b.next;
    if (b.next >= 0) sym[static_cast<size_t>(b.next)].prev = top.left;
    b.len = 0;
    try_pair(a.prev, top.left);
    try_pair(top.left, a.next);
  }

  std::function<void(const std::string&)> emit = [&](const std::string& w) {
    auto it = normal_.find(w);
    if (it != normal_.end() && m_.types[static_cast<size_t>(it->second)] == TokenType::Unused) {
      auto r = rev_merge.find(w);
      if (r != rev_merge.end()) {
        emit(r->second.first);  // the recursion only reads rev_merge, so r stays valid
        emit(r->second.second);
        return;
      }
    }
    append_ids(w, out);
  };
  for (int k = sym.empty() ? -1 : 0; k >= 0; k = sym[static_cast<size_t>(k)].next)
    emit(s.substr(sym[static_cast<size_t>(k)].start, sym[static_cast<size_t>(k)].len));
}

std::string SentencePieceTokenizer::surface(int64_t id) const {
  const auto i = static_cast<size_t>(id);
  switch (m_.types[i]) {
    case TokenType::Control: return "";
    case TokenType::Unknown: return m_.unk_surface;
    case TokenType::Byte: return std::string(1, static_cast<char>(utf8::parse_byte_piece(m_.pieces[i])));
    default: return utf8::replace_all(m_.pieces[i], utf8::kMetaspace, " ");  // whatever escape_whitespaces says
  }
}

namespace {
// Bytes of byte pieces as text: each maximal valid UTF-8 character kept, each other byte U+FFFD.
void append_bytes(std::string& out, std::string& bytes) {
  for (int32_t i = 0, n = static_cast<int32_t>(bytes.size()); i < n;) {
    const int32_t b = i;
    UChar32 c;
    U8_NEXT(reinterpret_cast<const uint8_t*>(bytes.data()), i, n, c);
    if (c < 0) {
      out += "\xEF\xBF\xBD";
      i = b + 1;
    } else {
      out.append(bytes, static_cast<size_t>(b), static_cast<size_t>(i - b));
    }
  }
  bytes.clear();
}
}  // namespace

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  // As sentencepiece: the leading "▁" comes off the first piece that starts the text (off every
  // such piece while the text is empty when remove_extra_whitespaces is set); bytes are gathered
  // and made UTF-8, an invalid byte becoming U+FFFD.
  const bool strip = m_.add_dummy_prefix || m_.remove_extra_whitespaces;
  std::string out, bytes;
  bool at_start = true, stripped = false;
  for (int64_t id : ids) {
    check_id(id);
    const auto i = static_cast<size_t>(id);
    if (m_.types[i] == TokenType::Byte) {
      bytes += surface(id);
      continue;
    }
    append_bytes(out, bytes);
    if (stripped || !out.empty()) at_start = false;
    stripped = false;
    const TokenType t = m_.types[i];
    if (at_start && strip && t != TokenType::Control && t != TokenType::Unknown &&
        m_.pieces[i].compare(0, utf8::kMetaspace.size(), utf8::kMetaspace) == 0) {
      out += utf8::replace_all(m_.pieces[i].substr(utf8::kMetaspace.size()), utf8::kMetaspace, " ");
      stripped = !m_.remove_extra_whitespaces;
      continue;
    }
    out += surface(id);
  }
  append_bytes(out, bytes);
  return out;
}

std::string SentencePieceTokenizer::decode_piece(int64_t prev, int64_t id) const {
  check_id(id);
  std::string t = surface(id);
  if (prev == bos_ && (m_.add_dummy_prefix || m_.remove_extra_whitespaces) &&
      m_.types[static_cast<size_t>(id)] != TokenType::Byte && m_.types[static_cast<size_t>(id)] != TokenType::Unknown &&
      !t.empty() && t[0] == ' ')
    t.erase(0, 1);
  return t;
}

}  // namespace qinterp::text
