#include "qinterp/analysis/clustering.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "qinterp/error.hpp"

namespace qinterp::analysis {

// Average linkage by nearest-neighbour chains (Murtagh; valid because average linkage is
// reducible), Lance–Williams updates in the condensed matrix, union-find for the cut.

std::vector<int64_t> average_linkage_clusters(std::vector<double> d, int64_t n, double threshold) {
  if (static_cast<int64_t>(d.size()) != n * (n - 1) / 2)
    fail("average_linkage_clusters: ", d.size(), " distances for ", n, " points (expected n(n-1)/2)");
  auto at_ = [&](int64_t i, int64_t j) -> double& {
    if (i > j) std::swap(i, j);
    return d[static_cast<size_t>(i * n - i * (i + 1) / 2 + (j - i - 1))];
  };
  std::vector<int64_t> size(static_cast<size_t>(n), 1), parent(static_cast<size_t>(n));
  std::iota(parent.begin(), parent.end(), 0);
  std::vector<char> active(static_cast<size_t>(n), 1);
  std::function<int64_t(int64_t)> find = [&](int64_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  std::vector<int64_t> chain;
  int64_t remaining = n;
  // Cluster ids are point indices: a merged cluster keeps the index of one of its parts.
  while (remaining > 1) {
    if (chain.empty()) {
      for (int64_t i = 0; i < n; ++i)
        if (active[i]) {
          chain.push_back(i);
          break;
        }
    }
    const int64_t a = chain.back();
    const int64_t prev = chain.size() >= 2 ? chain[chain.size() - 2] : -1;
    int64_t best = prev;
    double bd = prev >= 0 ? at_(a, prev) : std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < n; ++k) {
      if (!active[k] || k == a) continue;
      const double v = at_(a, k);
      if (v < bd) {
        bd = v;
        best = k;
      }
    }
    if (best == prev) {  // a and prev are reciprocal nearest neighbours: merge them
      chain.pop_back();
      chain.pop_back();
      const int64_t keep = std::min(a, prev), gone = std::max(a, prev);
      const double sa = static_cast<double>(size[a]), sb = static_cast<double>(size[prev]);
      for (int64_t k = 0; k < n; ++k) {
        if (!active[k] || k == a || k == prev) continue;
        at_(keep, k) = (sa * at_(a, k) + sb * at_(prev, k)) / (sa + sb);
      }
      active[gone] = 0;
      size[keep] += size[gone];
      if (bd <= threshold) parent[find(gone)] = find(keep);
      --remaining;
    } else {
      chain.push_back(best);
    }
  }
  std::vector<int64_t> label(static_cast<size_t>(n), -1), out(static_cast<size_t>(n));
  int64_t next = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t root = find(i);
    if (label[root] < 0) label[root] = next++;
    out[i] = label[root];
  }
  return out;
}

}  // namespace qinterp::analysis
