// qinterp::Error — the one exception type the library throws for bad input or misuse.
// Messages say what went wrong, where (file, byte offset, tensor or hook name) and, where it
// helps, what the caller can do about it.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace qinterp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
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
