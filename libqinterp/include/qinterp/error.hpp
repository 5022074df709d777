// qinterp::Error — the one exception type the library throws for bad input or misuse.
// Messages say what went wrong, where (file, byte offset, tensor or hook name) and, where it
// helps, what the caller can do about it.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qinterp {

namespace detail {
// The message with every byte that is not part of well-formed UTF-8 written as \xNN. Messages
// quote bytes from the files they describe (a parser's "last read" text, a tensor name), and a
// message must stay printable and convertible to a Python str whatever the file held.
inline std::string printable_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = b[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (b[i + k] & 0xC0) == 0x80;
    if (ok && len > 1) {  // no overlong forms, surrogates or code points past U+10FFFF
      unsigned cp = c & (0x7F >> len);
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (b[i + k] & 0x3F);
      ok = cp >= (len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u) && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
      ++i;
    }
  }
  return out;
}
}  // namespace detail

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(detail::printable_utf8(what)) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, T&& v, R&&... rest) {
  os << std::forward<T>(v);
  append(os, std::forward<R>(rest)...);
}
}  // namespace detail

// fail("file ", path, ": offset ", off, " is past the end") — formats and throws qinterp::Error.
template <class... A>
[[noreturn]] void fail(A&&... parts) {
  std::ostringstream os;
  detail::append(os, std::forward<A>(parts)...);
  throw Error(os.str());
}

}  // namespace qinterp
