// Clustering of neurons by correlation distance (NeuroX's independent-neuron count).
#pragma once
#include <cstdint>
#include <vector>

namespace qinterp::analysis {

// Average-linkage agglomerative clustering of `n` points from their condensed distance vector
// (i < j in row-major order, as scipy's pdist), cut at `threshold`: returns a label in [0, k)
// per point (labels numbered by first appearance). Nearest-neighbour chain, O(n²) time.
std::vector<int64_t> average_linkage_clusters(std::vector<double> condensed, int64_t n, double threshold);

}  // namespace qinterp::analysis
