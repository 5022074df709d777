// A bounded cache of word -> ids shared by the BPE tokenizers (private). Words repeat a lot in
// text, and merging is the expensive part; HF tokenizers keeps the same kind of cache.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace qinterp::text {

class WordCache {
 public:
  static constexpr size_t kMaxEntries = 1 << 17;
  static constexpr size_t kMaxWordBytes = 256;  // longer words are merged every time

  bool get(const std::string& w, std::vector<int64_t>& out) const {
    if (w.size() >= kMaxWordBytes) return false;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = words_.find(w);
    if (it == words_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void put(const std::string& w, const int64_t* ids, size_t n) {
    if (w.size() >= kMaxWordBytes) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (words_.size() < kMaxEntries) words_.emplace(w, std::vector<int64_t>(ids, ids + n));
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::vector<int64_t>> words_;
};

}  // namespace qinterp::text
