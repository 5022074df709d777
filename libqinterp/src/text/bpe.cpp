// BPE as HF tokenizers runs it: added tokens, normalizer, pre-tokenizer, merges by rank, decoder.
// Each step follows the tokenizers crate's semantics (the tests compare against it id by id).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <queue>
#include <unordered_set>

#include "bpe.hpp"
#include "qinterp/error.hpp"
#include "unicode.hpp"
#include "word_cache.hpp"

namespace qinterp::text {

// --- regex ----------------------------------------------------------------------------------------

Regex::Regex(const std::string& pattern, const std::string& source) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                             &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(source, ": regex '", pattern, "' does not compile at offset ", off, " (", reinterpret_cast<char*>(msg), ")");
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is unavailable
  pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &pairs_);
  ++pairs_;  // the whole match
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(const std::string& s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  auto* code = static_cast<pcre2_code*>(code_);
  // One match-data block per thread, grown to the pattern's needs once.
  thread_local pcre2_match_data* md = nullptr;
  thread_local uint32_t md_pairs = 0;
  if (!md || md_pairs < pairs_) {
    if (md) pcre2_match_data_free(md);
    md = pcre2_match_data_create(pairs_, nullptr);
    md_pairs = pairs_;
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    const int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("regex match failed with PCRE2 error ", rc);
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e == b) {  // an empty match: step over one character
      if (b >= s.size()) break;
      pos = b + std::max<size_t>(1, utf8::lead_len(s, b));
      continue;
    }
    out.emplace_back(b, e);
    pos = e;
  }
}

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const std::string (&byte_level_alphabet())[256] {
  static const auto table = [] {
    struct T { std::string s[256]; } t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      std::string ch;
      utf8::append(ch, printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++));
      t.s[b] = ch;
    }
    return t;
  }();
  return table.s;
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Spec> spec, const std::string& source) : s_(std::move(spec)) {
  source_ = source;
  init();
}

BpeTokenizer::BpeTokenizer(const std::string& tokenizer_json) : s_(read_tokenizer_json(tokenizer_json)) {
  source_ = tokenizer_json;
  init();
}

BpeTokenizer::~BpeTokenizer() = default;

namespace {
std::string normalize(const BpeTokenizer::Spec& spec, std::string s);
}

void BpeTokenizer::init() {
  cache_ = std::make_shared<WordCache>();
  for (const auto& p : s_->pre)
    if (p.kind == Spec::Pre::ByteLevel) s_->byte_level = true;
  for (size_t i = 0; i + 1 < s_->pre.size(); ++i)
    if (s_->pre[i].kind == Spec::Pre::ByteLevel)
      fail(source_, ": a ByteLevel pre-tokenizer followed by others is not supported (ByteLevel must come last)");
  // As tokenizers: a normalized added token is matched in the normalized text as its content
  // normalized (a Prepend normalizer makes "<x>" "▁<x>"). Longest first, so that the first match
  // at a position is the longest one.
  for (auto& a : s_->added) a.pattern = a.normalized ? normalize(*s_, a.content) : a.content;
  std::stable_sort(s_->added.begin(), s_->added.end(),
                   [](const Spec::Added& a, const Spec::Added& b) { return a.pattern.size() > b.pattern.size(); });
  int64_t n = static_cast<int64_t>(s_->vocab.size());
  for (const auto& a : s_->added) n = std::max(n, a.id + 1);
  s_->vocab.resize(static_cast<size_t>(n));
  for (const auto& a : s_->added)
    if (!a.pattern.empty()) s_->added_by_byte[a.normalized][static_cast<unsigned char>(a.pattern[0])].push_back(&a);
  s_->special_flag.assign(static_cast<size_t>(n), 0);
  // tokenizers 0.23 decodes a normalized added token as its normalized content, and leaves out of
  // a decode the tokens whose text is the content of a special one.
  std::unordered_set<std::string> special;
  for (const auto& a : s_->added)
    if (a.special) special.insert(a.content);
  for (const auto& a : s_->added) {
    if (a.id < 0) fail(source_, ": added token '", a.content, "' has id ", a.id);
    s_->vocab[static_cast<size_t>(a.id)] = a.pattern;
    s_->special_flag[static_cast<size_t>(a.id)] = special.count(a.pattern) > 0;
  }
  bos_ = s_->bos, eos_ = s_->eos, pad_ = s_->pad, unk_ = s_->unk >= 0 ? s_->unk : s_->model_unk;
  add_bos_ = s_->add_bos && bos_ >= 0;
  add_eos_ = s_->add_eos && eos_ >= 0;
  // SentencePiece-style files (Metaspace without split) hand the model whole texts. Merging them
  // word by word, at each "▁" that follows another character, gives the same ids when no
  // vocabulary token has such a "▁" inside (so no merge can cross a word start) and "▁" itself
  // is a token (so unk fusing cannot either); the words can then be cached.
  split_words_ = !s_->byte_level && s_->ids.count(split_at_);
  for (const auto& t : s_->vocab) {
    if (!split_words_) break;
    for (size_t k = t.find(split_at_, 1); k != std::string::npos && split_words_; k = t.find(split_at_, k + 1))
      if (k < split_at_.size() || t.compare(k - split_at_.size(), split_at_.size(), split_at_) != 0) split_words_ = false;
  }
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(s_->vocab.size()); }

const std::string& BpeTokenizer::piece(int64_t id) const {
  check_id(id);
  return s_->vocab[static_cast<size_t>(id)];
}

namespace {

using Spec = BpeTokenizer::Spec;

struct Piece {
  std::string text;
  size_t offset;       // where it starts in the original text (Metaspace's "first" needs it)
  int64_t id = -1;     // >= 0 for an added token, which no later step touches
};

bool is_ws(const std::string& s, size_t i, size_t* len) {
  // Unicode White_Space in UTF-8 (what Rust's char::is_whitespace tests).
  const auto c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return *len = 1, true;
  static const char* const multi[] = {"\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                      "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (const char* m : multi) {
    const size_t l = std::strlen(m);
    if (s.compare(i, l, m) == 0) return *len = l, true;
  }
  if (s.compare(i, 2, "\xE2\x80") == 0 && i + 2 < s.size()) {  // U+2000..U+200A
    const auto d = static_cast<unsigned char>(s[i + 2]);
    if (d >= 0x80 && d <= 0x8A) return *len = 3, true;
  }
  return false;
}

size_t trim_left(const std::string& s, size_t b, size_t e) {
  size_t l;
  while (b < e && is_ws(s, b, &l)) b += l;
  return b;
}
size_t trim_right(const std::string& s, size_t b, size_t e) {
  // Whitespace characters end in an ASCII byte or one of the multi-byte forms above; step back
  // one character at a time.
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t l;
    if (!is_ws(s, k, &l) || k + l != e) break;
    e = k;
  }
  return e;
}

// Unicode \w as Rust's regex has it (UTS #18): Alphabetic, marks, decimal digits, connector
// punctuation, join controls.
bool is_word_char(UChar32 c) {
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) return true;
  const int8_t t = u_charType(c);
  return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

// Whether the character ending at byte `e` (before) or starting at byte `b` (after) is a word
// character; s is valid UTF-8.
bool word_before(const std::string& s, size_t e) {
  if (e == 0) return false;
  int32_t i = static_cast<int32_t>(e);
  UChar32 c;
  U8_PREV(reinterpret_cast<const uint8_t*>(s.data()), 0, i, c);
  return c >= 0 && is_word_char(c);
}
bool word_after(const std::string& s, size_t b) {
  if (b >= s.size()) return false;
  int32_t i = static_cast<int32_t>(b);
  UChar32 c;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int32_t>(s.size()), c);
  return c >= 0 && is_word_char(c);
}

// Cut `text` at the added tokens (leftmost, longest), honouring lstrip / rstrip / single_word as
// tokenizers does: a single_word match inside a word is passed over whole, not tried shorter.
void split_added(const Spec& spec, bool normalized, const std::string& text, size_t offset, std::vector<Piece>& out) {
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const Spec::Added* hit = nullptr;
    for (const Spec::Added* ap : spec.added_by_byte[normalized][static_cast<unsigned char>(text[i])])
      if (text.compare(i, ap->pattern.size(), ap->pattern) == 0) {
        hit = ap;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    if (hit->single_word && (word_before(text, i) || word_after(text, i + hit->pattern.size()))) {
      i += hit->pattern.size();
      continue;
    }
    size_t b = i, e = i + hit->pattern.size();
    if (hit->lstrip) b = std::max(start, trim_right(text, start, b));
    if (hit->rstrip) e = trim_left(text, e, text.size());
    if (b > start) out.push_back({text.substr(start, b - start), offset + start});
    out.push_back({hit->content, offset + b, hit->id});
    // tokenizers goes on looking from the end of the match, inside the whitespace an rstrip took:
    // "\n\n" with an rstrip "\n" token is that token twice.
    start = e;
    i += hit->pattern.size();
  }
  if (start < text.size()) out.push_back({text.substr(start), offset + start});
}

std::string icu_transform(const std::string& in, const Spec::Norm& n) {
  UErrorCode err = U_ZERO_ERROR;
  // tokenizers lowercases character by character; ICU's full mapping would also apply the one
  // contextual rule of the root locale, Σ -> ς at the end of a word. σ maps to itself, so
  // taking Σ to σ first leaves character-by-character mapping.
  const std::string s = n.kind == Spec::Norm::Lowercase ? utf8::replace_all(in, "\xCE\xA3", "\xCF\x83") : in;
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  if (n.kind == Spec::Norm::Lowercase) {
    u.toLower(icu::Locale::getRoot());
  } else {
    const icu::Normalizer2* norm = n.a == "NFC"    ? icu::Normalizer2::getNFCInstance(err)
                                   : n.a == "NFD"  ? icu::Normalizer2::getNFDInstance(err)
                                   : n.a == "NFKC" ? icu::Normalizer2::getNFKCInstance(err)
                                                   : icu::Normalizer2::getNFKDInstance(err);
    if (U_FAILURE(err)) fail("ICU ", n.a, " normalizer unavailable: ", u_errorName(err));
    u = norm->normalize(u, err);
    if (U_FAILURE(err)) fail("ICU ", n.a, " normalization failed: ", u_errorName(err));
  }
  std::string out;
  u.toUTF8String(out);
  return out;
}

std::string normalize(const Spec& spec, std::string s) {
  std::vector<std::pair<size_t, size_t>> m;
  for (const auto& n : spec.normalizer) {
    switch (n.kind) {
      case Spec::Norm::Prepend:
        if (!s.empty()) s = n.a + s;
        break;
      case Spec::Norm::Replace: s = utf8::replace_all(s, n.a, n.b); break;
      case Spec::Norm::ReplaceRegex: {
        n.re->find_all(s, m);
        std::string o;
        size_t p = 0;
        for (auto [b, e] : m) o.append(s, p, b - p), o += n.b, p = e;
        o.append(s, p, std::string::npos);
        s = std::move(o);
        break;
      }
      case Spec::Norm::Strip: {
        size_t b = 0, e = s.size();
        if (n.left) b = trim_left(s, b, e);
        if (n.right) e = trim_right(s, b, e);
        s = s.substr(b, e - b);
        break;
      }
      case Spec::Norm::Unicode:
      case Spec::Norm::Lowercase: s = icu_transform(s, n); break;
    }
  }
  return s;
}

// tokenizers' NormalizedString::split: the string as alternating (range, is_match) parts, then
// regrouped by the behaviour; empty parts dropped.
void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior how,
                 bool invert, std::vector<Piece>& out) {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (b > prev) parts.push_back({{prev, b}, invert});
    parts.push_back({{b, e}, !invert});
    prev = e;
  }
  if (prev < p.text.size()) parts.push_back({{prev, p.text.size()}, invert});
  std::vector<std::pair<size_t, size_t>> keep;
  bool prev_match = false;
  switch (how) {
    case SplitBehavior::Removed:
      for (auto& [r, is] : parts)
        if (!is) keep.push_back(r);
      break;
    case SplitBehavior::Isolated:
      for (auto& [r, is] : parts) keep.push_back(r);
      break;
    case SplitBehavior::MergedWithPrevious:
      for (auto& [r, is] : parts) {
        if (is && !prev_match && !keep.empty()) keep.back().second = r.second;
        else keep.push_back(r);
        prev_match = is;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->second && !prev_match && !keep.empty()) keep.back().first = it->first.first;
        else keep.push_back(it->first);
        prev_match = it->second;
      }
      std::reverse(keep.begin(), keep.end());
      break;
    case SplitBehavior::Contiguous:
      for (auto& [r, is] : parts) {
        if (is == prev_match && !keep.empty()) keep.back().second = r.second;
        else keep.push_back(r);
        prev_match = is;
      }
      break;
  }
  for (auto [b, e] : keep)
    if (e > b) out.push_back({p.text.substr(b, e - b), p.offset + b});
}

void pre_tokenize(const Spec& spec, std::vector<Piece>& pieces) {
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> m;
  for (const auto& step : spec.pre) {
    next.clear();
    for (auto& p : pieces) {
      if (p.id >= 0) {
        next.push_back(std::move(p));
        continue;
      }
      switch (step.kind) {
        case Spec::Pre::Split:
        case Spec::Pre::Digits:
          step.re->find_all(p.text, m);
          split_piece(p, m, step.behavior, step.invert, next);
          break;
        case Spec::Pre::Whitespace:  // keep the runs of \w+ | [^\w\s]+
          step.re->find_all(p.text, m);
          split_piece(p, m, SplitBehavior::Removed, true, next);
          break;
        case Spec::Pre::WhitespaceSplit: {
          m.clear();
          size_t l;
          for (size_t i = 0; i < p.text.size();) {
            if (is_ws(p.text, i, &l)) {
              m.emplace_back(i, i + l);
              i += l;
            } else {
              ++i;
            }
          }
          split_piece(p, m, SplitBehavior::Removed, false, next);
          break;
        }
        case Spec::Pre::ByteLevel:
          if (step.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
          if (step.re) {
            step.re->find_all(p.text, m);
            split_piece(p, m, SplitBehavior::Isolated, false, next);
          } else {
            next.push_back(std::move(p));
          }
          break;
        case Spec::Pre::Metaspace: {
          p.text = utf8::replace_all(p.text, " ", step.replacement);
          const bool starts = p.text.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts && (step.prepend == Spec::Pre::Always || (step.prepend == Spec::Pre::First && p.offset == 0)))
            p.text.insert(0, step.replacement);
          if (step.split) {
            m.clear();
            for (size_t i = 0; (i = p.text.find(step.replacement, i)) != std::string::npos; i += step.replacement.size())
              m.emplace_back(i, i + step.replacement.size());
            split_piece(p, m, SplitBehavior::MergedWithNext, false, next);
          } else {
            next.push_back(std::move(p));
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

}  // namespace

std::vector<int64_t> BpeTokenizer::tokenize(const std::string& text) const {
  const Spec& spec = *s_;
  const std::string clean = utf8::sanitize(text);
  std::vector<Piece> raw, pieces;
  split_added(spec, false, clean, 0, raw);
  for (auto& r : raw) {
    if (r.id >= 0) {
      pieces.push_back(std::move(r));
      continue;
    }
    split_added(spec, true, normalize(spec, r.text), r.offset, pieces);
  }
  pre_tokenize(spec, pieces);

  std::vector<int64_t> out;
  out.reserve(clean.size() / 3 + 4);
  std::string word;
  const auto& alphabet = byte_level_alphabet();
  for (const auto& p : pieces) {
    if (p.id >= 0) {
      out.push_back(p.id);
      continue;
    }
    if (spec.byte_level) {
      word.clear();
      for (unsigned char c : p.text) word += alphabet[c];
    } else {
      word = p.text;
    }
    if (word.empty()) continue;
    if (!split_words_ || word.size() < 2 * split_at_.size()) {
      merge_cached(word, out);
      continue;
    }
    // A long SentencePiece-style piece: merge it word by word (exact, see init()).
    size_t b = 0;
    for (size_t k = word.find(split_at_, 1); k != std::string::npos; k = word.find(split_at_, k + split_at_.size())) {
      if (k >= split_at_.size() && word.compare(k - split_at_.size(), split_at_.size(), split_at_) == 0) continue;
      merge_cached(word.substr(b, k - b), out);
      b = k;
    }
    merge_cached(word.substr(b), out);
  }
  return out;
}

void BpeTokenizer::merge_cached(const std::string& word, std::vector<int64_t>& out) const {
  if (cache_->get(word, out)) return;
  const Spec& spec = *s_;
  std::vector<int64_t> ids;
  auto direct = spec.ids.find(word);
  if (spec.ignore_merges && direct != spec.ids.end()) {
    ids.push_back(direct->second);
  } else {
    // Symbols: one per character; unknown characters as bytes (byte_fallback) or unk (fused).
    struct Sym {
      int64_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Sym> sym;
    bool last_unk = false;
    char hex[8];
    for (size_t i = 0; i < word.size();) {
      const size_t l = utf8::lead_len(word, i);
      auto f = spec.ids.find(word.substr(i, l));
      std::vector<int64_t> add;
      bool unk = false;
      if (f != spec.ids.end()) {
        add.push_back(f->second);
      } else {
        if (spec.byte_fallback) {
          for (size_t k = i; k < i + l; ++k) {
            std::snprintf(hex, sizeof hex, "<0x%02X>", static_cast<unsigned char>(word[k]));
            auto bf = spec.ids.find(hex);
            if (bf == spec.ids.end()) {
              add.clear();
              break;
            }
            add.push_back(bf->second);
          }
        }
        if (add.empty()) {
          unk = true;
          if (spec.model_unk >= 0 && !(spec.fuse_unk && last_unk)) add.push_back(spec.model_unk);
        }
      }
      for (int64_t id : add) {
        const int idx = static_cast<int>(sym.size());
        sym.push_back({id, idx - 1, -1, true});
        if (idx > 0) sym[static_cast<size_t>(idx - 1)].next = idx;
      }
      last_unk = unk;
      i += l;
    }
    // Merge the lowest-ranked adjacent pair first, leftmost on ties.
    struct Cand {
      int32_t rank;
      int pos;
      int64_t new_id;
      bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand> heap;
    const auto key = [](int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); };
    const auto push = [&](int l) {
      if (l < 0) return;
      const int r = sym[static_cast<size_t>(l)].next;
      if (r < 0) return;
      auto it = spec.merges.find(key(sym[static_cast<size_t>(l)].id, sym[static_cast<size_t>(r)].id));
      if (it != spec.merges.end()) heap.push({it->second.first, l, it->second.second});
    };
    for (int k = 0; k + 1 < static_cast<int>(sym.size()); ++k) push(k);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& a = sym[static_cast<size_t>(c.pos)];
      if (!a.alive || a.next < 0) continue;
      Sym& b = sym[static_cast<size_t>(a.next)];
      auto it = spec.merges.find(key(a.id, b.id));
      if (it == spec.merges.end() || it->second.second != c.new_id) continue;
      a.id = c.new_id;
      b.alive = false;
      a.next = b.next;
      if (b.next >= 0) sym[static_cast<size_t>(b.next)].prev = c.pos;
      push(a.prev);
      push(c.pos);
    }
    for (int k = sym.empty() ? -1 : 0; k >= 0; k = sym[static_cast<size_t>(k)].next) ids.push_back(sym[static_cast<size_t>(k)].id);
  }
  out.insert(out.end(), ids.begin(), ids.end());
  cache_->put(word, ids.data(), ids.size());
}

namespace {

// The decoder chain over a list of tokens (tokenizers' decode_chain), bytes kept raw.
std::vector<std::string> run_decoder(const Spec& spec, std::vector<std::string> toks, bool first) {
  static const auto inverse = [] {
    std::unordered_map<std::string, unsigned char> m;
    const auto& a = byte_level_alphabet();
    for (int b = 0; b < 256; ++b) m[a[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  for (const auto& d : spec.decoder) {
    std::vector<std::string> next;
    switch (d.kind) {
      case Spec::Dec::ByteLevel:
        for (auto& t : toks) {
          std::string bytes;
          bool ok = true;
          for (size_t i = 0; i < t.size() && ok;) {
            const size_t l = utf8::lead_len(t, i);
            auto it = inverse.find(t.substr(i, l));
            if (it == inverse.end()) ok = false;
            else bytes += static_cast<char>(it->second);
            i += l;
          }
          next.push_back(ok ? bytes : t);
        }
        break;
      case Spec::Dec::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i) {
          std::string t = utf8::replace_all(toks[i], d.a, " ");
          if (i == 0 && first && d.prepend_first && !t.empty() && t[0] == ' ') t.erase(0, 1);
          next.push_back(std::move(t));
        }
        break;
      case Spec::Dec::Replace:
        for (auto& t : toks) next.push_back(utf8::replace_all(t, d.a, d.b));
        break;
      case Spec::Dec::ByteFallback:
        for (auto& t : toks) {
          const int b = utf8::parse_byte_piece(t);
          next.push_back(b >= 0 ? std::string(1, static_cast<char>(b)) : t);
        }
        break;
      case Spec::Dec::Fuse: {
        std::string all;
        for (auto& t : toks) all += t;
        next.push_back(std::move(all));
        break;
      }
      case Spec::Dec::Strip:
        for (auto& t : toks) {
          std::string s = t;
          for (int k = 0; k < d.start && !s.empty() && s.compare(0, d.a.size(), d.a) == 0; ++k) s.erase(0, d.a.size());
          for (int k = 0; k < d.stop && s.size() >= d.a.size() && s.compare(s.size() - d.a.size(), d.a.size(), d.a) == 0; ++k)
            s.resize(s.size() - d.a.size());
          next.push_back(std::move(s));
        }
        break;
    }
    toks.swap(next);
  }
  return toks;
}

}  // namespace

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> toks;
  for (int64_t id : ids) {
    check_id(id);
    if (!s_->special_flag[static_cast<size_t>(id)]) toks.push_back(s_->vocab[static_cast<size_t>(id)]);
  }
  std::string out;
  const std::vector<std::string> pieces = run_decoder(*s_, std::move(toks), true);
  for (size_t i = 0; i < pieces.size(); ++i) out += (s_->join_with_space && i > 0 ? " " : "") + pieces[i];
  return out;
}

std::string BpeTokenizer::decode_piece(int64_t prev, int64_t id) const {
  check_id(id);
  if (s_->special_flag[static_cast<size_t>(id)]) return "";
  std::string out = s_->join_with_space && prev >= 0 && !s_->special_flag[static_cast<size_t>(prev)] ? " " : "";
  for (auto& t : run_decoder(*s_, {s_->vocab[static_cast<size_t>(id)]}, prev < 0 || prev == bos_)) out += t;
  return out;
}

}  // namespace qinterp::text
