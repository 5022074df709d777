// UTF-8 and byte-level helpers shared by the tokenizers (private).
#pragma once
#include <cstdint>
#include <string>

namespace qinterp::text::utf8 {

// Length of the UTF-8 sequence starting at s[i] if it is well formed (shortest form, no
// surrogates, <= U+10FFFF), else 0.
inline size_t valid_len(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const size_t n = s.size();
  const unsigned c = b(i);
  if (c < 0x80) return 1;
  const auto cont = [&](size_t k) { return k < n && (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0; // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0;
    return 4;
  }
  return 0;
}

// Length from the lead byte alone (sentencepiece's OneCharLen), clipped to the string.
inline size_t lead_len(const std::string& s, size_t i) {
  static const uint8_t table[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  const size_t l = table[static_cast<unsigned char>(s[i]) >> 4];
  return i + l <= s.size() ? l : s.size() - i;
}

inline void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

inline const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
inline const std::string kMetaspace = "\xE2\x96\x81";    // U+2581, SentencePiece's space

// Valid UTF-8 with each malformed byte replaced by U+FFFD (what sentencepiece's normalizer does;
// HF tokenizers never sees such bytes because Python strings are valid).
inline std::string sanitize(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t l = valid_len(s, i);
    if (l == 0) {
      out += kReplacement;
      ++i;
    } else {
      out.append(s, i, l);
      i += l;
    }
  }
  return out;
}

// "<0x4A>" -> 0x4A, or -1.
inline int parse_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = p[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

// Replace every occurrence of `from` in s with `to`.
inline std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t i = 0;
  for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) {
    out.append(s, i, j - i);
    out += to;
  }
  out.append(s, i, std::string::npos);
  return out;
}

}  // namespace qinterp::text::utf8
