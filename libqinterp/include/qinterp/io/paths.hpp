// Path helpers on POSIX calls, public so that the CLI and C++ users need no std::filesystem: the
// PyPI torch wheels export their own, older std::filesystem symbols from libtorch*.so, and a
// binary that binds to those instead of libstdc++'s crashes (seen with remove_all, torch 2.11).
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <string>

#include "qinterp/error.hpp"

namespace qinterp::io::paths {

inline bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}
inline bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
inline std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}
inline std::string parent(const std::string& p) {
  const size_t s = p.find_last_of('/');
  if (s == std::string::npos) return ".";
  return s == 0 ? "/" : p.substr(0, s);
}
inline bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// The last component without its extension ("models/SmolLM2.Q4_1.gguf" -> "SmolLM2.Q4_1").
inline std::string stem(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  std::string s = p.substr(p.find_last_of('/') + 1);
  const size_t dot = s.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? s : s.substr(0, dot);
}

// mkdir -p; throws qinterp::Error on failure.
inline void make_dirs(const std::string& p) {
  if (p.empty() || is_dir(p)) return;
  const std::string up = parent(p);
  if (up != p && up != "." && up != "/") make_dirs(up);
  if (::mkdir(p.c_str(), 0777) != 0 && errno != EEXIST)
    throw Error("cannot create directory " + p + ": " + std::strerror(errno));
}

// Removes an empty directory; false when it is not empty or cannot be removed.
inline bool remove_empty_dir(const std::string& p) { return ::rmdir(p.c_str()) == 0; }

}  // namespace qinterp::io::paths
