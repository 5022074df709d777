// Shared helpers for the C++ tests: fixture paths, scratch files, error expectations.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "qinterp/error.hpp"

namespace qt {

// QINTERP_SHARED overrides the configured path (the GPU machine gets a copy elsewhere).
inline std::string shared(const std::string& rel) {
  if (const char* e = std::getenv("QINTERP_SHARED")) return std::string(e) + "/" + rel;
  return std::string(QINTERP_SHARED_DIR) + "/" + rel;
}
inline std::string stories(const std::string& f) { return shared("fixtures/stories260K/" + f); }
inline std::string smollm2_gguf() {
  if (const char* e = std::getenv("QINTERP_MODELS")) return std::string(e) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return std::string(QINTERP_MODELS_DIR) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

inline std::string models_dir() {
  if (const char* e = std::getenv("QINTERP_MODELS")) return e;
  return QINTERP_MODELS_DIR;
}
inline std::string gemma3_gguf() { return models_dir() + "/gemma-3-270m-q4_k_m.gguf"; }
inline std::string qwen25_gguf() { return models_dir() + "/qwen2.5-coder-0.5b-instruct.gguf"; }

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A fresh scratch directory per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("qinterp_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream(file(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return file(name);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace qt

// Expects statement to throw qinterp::Error whose message contains every given fragment.
#define EXPECT_QERROR(statement, ...)                                                        \
  do {                                                                                       \
    try {                                                                                    \
      statement;                                                                             \
      ADD_FAILURE() << "expected qinterp::Error from " #statement;                          \
    } catch (const qinterp::Error& e) {                                                      \
      for (const std::string& frag : std::vector<std::string>{__VA_ARGS__})                  \
        EXPECT_NE(std::string(e.what()).find(frag), std::string::npos)                       \
            << "message '" << e.what() << "' lacks '" << frag << "'";                        \
    }                                                                                        \
  } while (0)
