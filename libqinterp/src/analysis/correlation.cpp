#include "qinterp/analysis/correlation.hpp"

#include "qinterp/analysis/clustering.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <tuple>

#include <ATen/Parallel.h>

#include "comoment.hpp"
#include "common.hpp"
#include "qinterp/device.hpp"

namespace qinterp::analysis {

using namespace detail;

// ---------------------------------------------------------------------------------------------
// Correlation

namespace {

struct ScoredPair {
  double v;
  int64_t i, j;
};
// For std heaps: with this order the front is the smallest, so a heap keeps the k largest.
bool larger(const ScoredPair& a, const ScoredPair& b) { return a.v > b.v || (a.v == b.v && (a.i < b.i || (a.i == b.i && a.j < b.j))); }

// |r| = |M2_ij| · inv_i · inv_j, where inv = 1/√M2_ii; two roundings of the inverses can put a
// value that is exactly on a bin edge (0.5 = 1/(√2·√2)) one ulp below it, so a value within
// kEdgeSlack bins of an edge is recomputed as |M2_ij| / √(M2_ii·M2_jj), correctly rounded.
constexpr double kEdgeSlack = 1e-9;
inline double abs_r(double m2, double inv_i, double inv_j, double d_i, double d_j, int64_t bins) {
  double v = std::min(std::abs(m2 * inv_i * inv_j), 1.0);
  const double x = v * static_cast<double>(bins);
  if (std::abs(x - std::nearbyint(x)) < kEdgeSlack) v = std::min(std::abs(m2) / std::sqrt(d_i * d_j), 1.0);
  return v;
}

// |r| (abs_r, the same values as the ATen path), clamped to 1, for the pairs i < j of non-constant
// neurons: the histogram over `edges` as np.histogram bins it, the top k (largest first) and, when
// `condensed` is given, the distances 1 − |r| for clustering.
void scan_pairs_cpu(const std::vector<at::Tensor>& tiles, int64_t tile, int64_t n, const double* inv, const double* diag,
                    const bool* zero, const double* edges, int64_t bins, int64_t k, double* condensed,
                    std::vector<int64_t>& hist, std::vector<ScoredPair>& top) {
  const int64_t nt = at::get_num_threads();
  std::vector<std::vector<int64_t>> hists(static_cast<size_t>(nt), std::vector<int64_t>(static_cast<size_t>(bins), 0));
  std::vector<std::vector<ScoredPair>> heaps(static_cast<size_t>(nt));
  for (size_t a = 0; a < tiles.size(); ++a) {
    const at::Tensor m2 = tiles[a].contiguous();
    const double* m = m2.data_ptr<double>();
    const int64_t a0 = static_cast<int64_t>(a) * tile, ra = m2.size(0), w = m2.size(1);
    at::parallel_for(0, ra, 8, [&](int64_t i0, int64_t i1) {
      auto& h = hists[static_cast<size_t>(at::get_thread_num())];
      auto& heap = heaps[static_cast<size_t>(at::get_thread_num())];
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t gi = a0 + i;
        if (zero[gi]) continue;
        const double* row = m + i * w;
        const double ii = inv[gi];
        double* cd = condensed ? condensed + (gi * n - gi * (gi + 1) / 2 - gi - 1) : nullptr;  // cd[gj], gj > gi
        for (int64_t c = i + 1; c < w; ++c) {
          const int64_t gj = a0 + c;
          if (zero[gj]) continue;
          const double v = abs_r(row[c], ii, inv[gj], diag[gi], diag[gj], bins);
          // the bin whose [edges[b], edges[b + 1]) holds v; 1.0 goes to the last
          int64_t b = std::min(static_cast<int64_t>(v * static_cast<double>(bins)), bins);
          while (b < bins && edges[b + 1] <= v) ++b;
          while (b > 0 && edges[b] > v) --b;
          ++h[static_cast<size_t>(std::min(b, bins - 1))];
          if (cd) cd[gj] = 1.0 - v;
          if (k > 0 && (static_cast<int64_t>(heap.size()) < k || v > heap.front().v)) {
            if (static_cast<int64_t>(heap.size()) == k) {
              std::pop_heap(heap.begin(), heap.end(), larger);
              heap.pop_back();
            }
            heap.push_back({v, gi, gj});
            std::push_heap(heap.begin(), heap.end(), larger);
          }
        }
      }
    });
  }
  hist.assign(static_cast<size_t>(bins), 0);
  for (const auto& h : hists)
    for (int64_t b = 0; b < bins; ++b) hist[static_cast<size_t>(b)] += h[static_cast<size_t>(b)];
  top.clear();
  for (const auto& h : heaps) top.insert(top.end(), h.begin(), h.end());
  std::sort(top.begin(), top.end(), larger);
  if (static_cast<int64_t>(top.size()) > k) top.resize(static_cast<size_t>(k));
}

// Chan's merge of nb tokens with mean mean_b into na tokens with mean `mean`: the shift of the
// mean (delta, float64, contiguous), the weight of its outer product in M2 (f = na·nb/n) and of
// delta in the new mean (w = nb/n).
struct MeanShift {
  at::Tensor delta;
  double f, w;
};
MeanShift mean_shift(int64_t na, int64_t nb, const at::Tensor& mean, const at::Tensor& mean_b) {
  const double n = static_cast<double>(na + nb);
  return {(mean_b - mean).contiguous(), static_cast<double>(na) * static_cast<double>(nb) / n,
          static_cast<double>(nb) / n};
}

}  // namespace

Correlation::Correlation(Options o) : o_(o) {
  if (o.bins < 1) fail("Correlation: bins must be >= 1, got ", o.bins);
  if (o.top_k < 0) fail("Correlation: top_k must be >= 0, got ", o.top_k);
  if (o.tile < 1) fail("Correlation: tile must be >= 1, got ", o.tile);
  if (o.chunk < 1) fail("Correlation: chunk must be >= 1, got ", o.chunk);
  if (o.cluster_threshold < 0 || o.cluster_threshold > 1)
    fail("Correlation: cluster_threshold is a distance 1 - |r| in (0, 1] (0 turns clustering off), got ",
         o.cluster_threshold);
}

void Correlation::update(const at::Tensor& act, const at::Tensor& mask) {
  at::Tensor x = widen(real_tokens(act, mask, "Correlation"), "Correlation");
  if (x.size(0) == 0) return;
  if (neurons_ && x.size(1) != neurons_)
    fail("Correlation", label_.empty() ? "" : " on '" + label_ + "'", ": got ", x.size(1), " neurons after ", neurons_,
         " in earlier updates");
  if (neurons_ && mean_.device() != x.device()) to(x.device());
  // Refuse non-finite input before anything is counted; the same sums give the centre.
  const at::Tensor sums = colsum64(x);
  check_finite(sums, x, "Correlation", label_, n_);
  if (!neurons_) {
    neurons_ = x.size(1);
    mean_ = at::zeros({neurons_}, x.options().dtype(at::kDouble));
    tiles_.clear();
    for (int64_t a = 0; a < ntiles(); ++a) {
      const int64_t a0 = a * o_.tile;
      tiles_.push_back(at::zeros({std::min(o_.tile, neurons_ - a0), neurons_ - a0}, mean_.options()));
    }
  }
  x = x.contiguous();
  // Every chunk is centred on this update's mean, rounded to x's precision: Chan's correction
  // (below) restores exactness, so it only has to be close.
  at::Tensor centre = (sums / static_cast<double>(x.size(0))).to(x.scalar_type()).contiguous();
  if (o_.cpu_kernel && x.device().is_cpu() && x.scalar_type() == at::kFloat && comoment_kernel_available())
    return add_chunks_kernel(x, centre);
  // Float32 products: neurons whose centred range float32 cannot square are scaled (see
  // RangeScales); one look at each neuron's range per update.
  at::Tensor scale, unscale;
  if (x.scalar_type() == at::kFloat) {
    const auto [lo, hi] = at::aminmax(x, 0);
    const at::Tensor c = centre.to(at::kDouble);
    const at::Tensor span = at::maximum(hi.to(at::kDouble) - c, c - lo.to(at::kDouble)).to(at::kFloat).cpu();
    const RangeScales rs = range_scales(span.data_ptr<float>(), neurons_);
    if (rs.overflow) {  // x − centre itself is beyond float32
      x = x.to(at::kDouble);
      centre = centre.to(at::kDouble);
    } else if (rs.any) {
      scale = at::tensor(rs.scale).to(x.device());
      unscale = at::tensor(rs.unscale).to(x.device());
    }
  }
  for (int64_t s = 0; s < x.size(0); s += o_.chunk)
    add_chunk(x.narrow(0, s, std::min(o_.chunk, x.size(0) - s)), centre, scale, unscale);
}

// One chunk: centre on m1, float32 tile products, then Chan's merge into M2. scale / unscale
// (optional, [N]): powers of two applied to the centred values for the products and undone in
// float64.
void Correlation::add_chunk(const at::Tensor& x, const at::Tensor& m1, const at::Tensor& scale,
                            const at::Tensor& unscale) {
  const int64_t nb = x.size(0), t = ntiles();
  // Centred on an approximate mean m1 (exactness is restored below); with s = Σ(x−m1):
  // the chunk mean is m1 + s/nb and Σ(x−m)(x−m)ᵀ = Σ(x−m1)(x−m1)ᵀ − s sᵀ/nb.
  at::Tensor xc = x - m1;
  at::Tensor sc = colsum64(xc);
  if (scale.defined()) xc.mul_(scale);
  const MeanShift sh = mean_shift(n_, nb, mean_, m1.to(at::kDouble) + sc / static_cast<double>(nb));
  // One product per block row (rows a0.., columns a0..N): wide GEMMs run near full speed.
  for (int64_t a = 0; a < t; ++a) {
    const int64_t a0 = a * o_.tile, ra = std::min(o_.tile, neurons_ - a0), w = neurons_ - a0;
    at::Tensor& m2 = tiles_[a];
    const at::Tensor p = at::mm(xc.narrow(1, a0, ra).t(), xc.narrow(1, a0, w));
    if (unscale.defined())
      m2.add_(p.to(at::kDouble).mul_(unscale.narrow(0, a0, ra).unsqueeze(1)).mul_(unscale.narrow(0, a0, w)));
    else
      m2.add_(p);
    m2.addr_(sc.narrow(0, a0, ra), sc.narrow(0, a0, w), 1.0, -1.0 / static_cast<double>(nb));
    if (n_ > 0) m2.addr_(sh.delta.narrow(0, a0, ra), sh.delta.narrow(0, a0, w), 1.0, sh.f);
  }
  mean_.add_(sh.delta * sh.w);
  n_ += nb;
}

// The same updates through comoment.cpp's kernel, chunk by chunk, with the work buffers made once
// per update: centre and pack the chunk (panels of 16 neurons), then each block row's upper
// triangle with both corrections fused into its store.
void Correlation::add_chunks_kernel(const at::Tensor& x, const at::Tensor& m1) {
  const int64_t t = ntiles(), n = neurons_, rows0 = std::min(o_.tile, n);
  const int64_t groups = (n + kComomentPanel - 1) / kComomentPanel, most = std::min(o_.chunk, x.size(0));
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), groups));
  const int64_t apack_n = static_cast<int64_t>(comoment_apack_floats(rows0));
  at::Tensor packed = at::empty({groups * most * kComomentPanel}, x.options());
  at::Tensor scratch = at::empty({static_cast<int64_t>(comoment_scratch_floats(0, rows0, n, most))}, x.options());
  at::Tensor apack = at::empty({parts * apack_n}, x.options());
  at::Tensor colsum = at::empty({groups * kComomentPanel}, x.options().dtype(at::kDouble));
  std::vector<float> colmax(static_cast<size_t>(groups * kComomentPanel));
  const float* shift = m1.data_ptr<float>();
  for (int64_t s0 = 0; s0 < x.size(0); s0 += o_.chunk) {
    const int64_t nb = std::min(o_.chunk, x.size(0) - s0);
    const float* xp = x.data_ptr<float>() + s0 * n;
    float* pp = packed.data_ptr<float>();
    double* cs = colsum.zero_().data_ptr<double>();
    at::parallel_for(0, groups, 1,
                     [&](int64_t g0, int64_t g1) { comoment_pack(xp, nb, n, shift, pp, cs, colmax.data(), g0, g1); });
    // Neurons beyond float32's comfortable range are scaled by powers of two (RangeScales); a
    // chunk whose centred values overflow float32 goes through the ATen path in float64.
    const RangeScales rs = range_scales(colmax.data(), n);
    if (rs.overflow) {
      add_chunk(x.narrow(0, s0, nb).to(at::kDouble), m1.to(at::kDouble));
      continue;
    }
    if (rs.any)
      at::parallel_for(0, groups, 1,
                       [&](int64_t g0, int64_t g1) { comoment_rescale(pp, nb, n, rs.scale.data(), g0, g1); });
    at::Tensor sc = colsum.narrow(0, 0, n);
    const MeanShift sh = mean_shift(n_, nb, mean_, m1.to(at::kDouble) + sc / static_cast<double>(nb));
    float* scr = comoment_scratch_floats(0, rows0, n, nb) ? scratch.data_ptr<float>() : nullptr;
    for (int64_t a = 0; a < t; ++a) {
      at::Tensor& m2 = tiles_[a];
      if (!m2.is_contiguous()) m2 = m2.contiguous();
      const ComomentRow row{a * o_.tile,        m2.size(0),
                            m2.size(1),         m2.data_ptr<double>(),
                            sc.data_ptr<double>(), -1.0 / static_cast<double>(nb),
                            n_ > 0 ? sh.delta.data_ptr<double>() : nullptr, sh.f,
                            rs.any ? rs.unscale.data() : nullptr};
      at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q)
          comoment_row(pp, nb, row, scr, apack.data_ptr<float>() + q * apack_n, q, parts);
      });
      comoment_mirror(row);
    }
    mean_.add_(sh.delta * sh.w);
    n_ += nb;
  }
}

void Correlation::merge_moments(int64_t nb, const at::Tensor& mean_b, const std::vector<at::Tensor>& m2_b) {
  const MeanShift sh = mean_shift(n_, nb, mean_, mean_b);
  for (int64_t a = 0; a < ntiles(); ++a) {
    const int64_t a0 = a * o_.tile;
    at::Tensor& m2 = tiles_[a];
    m2.add_(m2_b[a].to(m2.device()));
    m2.addr_(sh.delta.narrow(0, a0, m2.size(0)), sh.delta.narrow(0, a0, m2.size(1)), 1.0, sh.f);
  }
  mean_.add_(sh.delta * sh.w);
  n_ += nb;
}

void Correlation::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const Correlation*>(&other);
  if (!o) fail("Correlation: cannot merge a ", other.kind());
  same_setting("Correlation", "bins", static_cast<double>(o_.bins), static_cast<double>(o->o_.bins));
  same_setting("Correlation", "tile", static_cast<double>(o_.tile), static_cast<double>(o->o_.tile));
  if (!o->neurons_ || o->n_ == 0) return;
  if (!neurons_ || n_ == 0) {
    neurons_ = o->neurons_;
    n_ = o->n_;
    mean_ = o->mean_.clone();
    tiles_.clear();
    for (const auto& t : o->tiles_) tiles_.push_back(t.clone());
    return;
  }
  if (o->neurons_ != neurons_) fail("Correlation: cannot merge ", o->neurons_, " neurons into ", neurons_);
  merge_moments(o->n_, o->mean_.to(mean_.device()), o->tiles_);
}

State Correlation::state() const {
  State s{kind(),
          {{"bins", scalar(o_.bins)},
           {"tile", scalar(o_.tile)},
           {"tokens", scalar(n_)},
           {"neurons", scalar(neurons_)}}};
  if (neurons_) {
    s.tensors["mean"] = mean_.cpu();
    for (int64_t a = 0; a < ntiles(); ++a) s.tensors["m2_" + std::to_string(a)] = tiles_[a].cpu();
  }
  return s;
}

void Correlation::restore(const State& s) {
  check_kind(s, kind());
  const std::string k = kind();
  same_setting("Correlation", "bins", static_cast<double>(o_.bins), need_number(s, k, "bins"));
  same_setting("Correlation", "tile", static_cast<double>(o_.tile), need_number(s, k, "tile"));
  const int64_t tokens = need_count(s, k, "tokens"), neurons = need_count(s, k, "neurons");
  at::Tensor mean;
  std::vector<at::Tensor> tiles;
  if (neurons) {  // everything is checked before anything is replaced
    mean = need_array(s, k, "mean", {neurons}, at::kDouble);
    for (int64_t a0 = 0; a0 < neurons; a0 += o_.tile)
      tiles.push_back(need_array(s, k, "m2_" + std::to_string(a0 / o_.tile),
                                 {std::min(o_.tile, neurons - a0), neurons - a0}, at::kDouble));
  }
  n_ = tokens;
  neurons_ = neurons;
  mean_ = mean;
  tiles_ = std::move(tiles);
}

void Correlation::to(const at::Device& device) {
  check_device(device);
  mean_ = on(mean_, device);
  for (auto& t : tiles_) t = t.to(device);
}

at::Tensor Correlation::matrix() const {
  if (!neurons_) return at::empty({0, 0}, at::kDouble);
  at::Tensor m = at::empty({neurons_, neurons_}, mean_.options());
  for (int64_t a = ntiles() - 1; a >= 0; --a) {  // each row's diagonal block overwrites the mirror
    const at::Tensor& t = tiles_[a];
    const int64_t a0 = a * o_.tile;
    m.narrow(0, a0, t.size(0)).narrow(1, a0, t.size(1)).copy_(t);
    m.narrow(0, a0, t.size(1)).narrow(1, a0, t.size(0)).copy_(t.t());
  }
  at::Tensor d = m.diagonal().clone();
  at::Tensor inv = d.rsqrt();  // +inf for zero variance, giving NaN below as numpy does
  at::Tensor r = m * inv.unsqueeze(1) * inv.unsqueeze(0);
  r.masked_fill_(d.eq(0).unsqueeze(1) | d.eq(0).unsqueeze(0), std::numeric_limits<double>::quiet_NaN());
  return r.cpu();
}

Tensors Correlation::finalize() const {
  const int64_t n = neurons_;
  Tensors r{{"tokens", scalar(n_)}, {"neurons", scalar(n)}, {"pairs_total", scalar(n * (n - 1) / 2)}};
  at::Tensor edges = at::arange(o_.bins + 1, at::kDouble) / static_cast<double>(o_.bins);
  r["bin_edges"] = edges;
  if (!n || n_ == 0) {
    r["histogram"] = at::zeros({o_.bins}, at::kLong);
    r["pairs_counted"] = scalar(int64_t{0});
    r["pairs_excluded"] = scalar(n * (n - 1) / 2);
    r["zero_variance"] = at::arange(n, at::kLong);
    return r;
  }
  const auto dev = mean_.device();
  at::Tensor diag = at::empty({n}, mean_.options());
  for (int64_t a = 0; a < ntiles(); ++a) diag.narrow(0, a * o_.tile, tiles_[a].size(0)).copy_(tiles_[a].diagonal());
  at::Tensor zero = diag.le(0);  // exactly constant neurons have M2 = 0 exactly
  at::Tensor inv = at::where(zero, at::zeros_like(diag), diag.rsqrt());
  at::Tensor edges_dev = edges.to(dev);
  at::Tensor hist = at::zeros({o_.bins}, mean_.options().dtype(at::kLong));
  std::vector<at::Tensor> top_v, top_i, top_j;
  const bool cluster = o_.cluster_threshold > 0;
  std::vector<double> condensed;
  if (cluster) condensed.assign(static_cast<size_t>(n * (n - 1) / 2), 2.0);  // 2 > any 1 − |r|: never merged
  if (o_.cpu_kernel && dev.is_cpu()) {
    // One pass over each block row (the ATen steps make about ten).
    const at::Tensor e = edges.contiguous(), z = zero.contiguous(), iv = inv.contiguous(), dg = diag.contiguous();
    std::vector<int64_t> h;
    std::vector<ScoredPair> top;
    scan_pairs_cpu(tiles_, o_.tile, n, iv.data_ptr<double>(), dg.data_ptr<double>(), z.data_ptr<bool>(),
                   e.data_ptr<double>(), o_.bins,
                   o_.top_k, cluster ? condensed.data() : nullptr, h, top);
    hist = at::tensor(h, at::kLong);
    if (!top.empty()) {
      std::vector<double> tv;
      std::vector<int64_t> ti, tj;
      for (const auto& p : top) {
        tv.push_back(p.v);
        ti.push_back(p.i);
        tj.push_back(p.j);
      }
      top_v.push_back(at::tensor(tv, at::kDouble));
      top_i.push_back(at::tensor(ti, at::kLong));
      top_j.push_back(at::tensor(tj, at::kLong));
    }
  } else {
    for (int64_t a = 0; a < ntiles(); ++a) {
      const at::Tensor& m2 = tiles_[a];
      const int64_t a0 = a * o_.tile, ra = m2.size(0), w = m2.size(1);
      at::Tensor ar = (m2 * inv.narrow(0, a0, ra).unsqueeze(1) * inv.narrow(0, a0, w).unsqueeze(0)).abs_().clamp_max_(1.0);
      {  // values within kEdgeSlack of a bin edge, correctly rounded (abs_r)
        const at::Tensor x = ar * static_cast<double>(o_.bins);
        const at::Tensor near = (x - x.round()).abs_().lt(kEdgeSlack);
        if (near.any().item<bool>()) {
          const at::Tensor exact =
              (m2.abs() / (diag.narrow(0, a0, ra).unsqueeze(1) * diag.narrow(0, a0, w).unsqueeze(0)).sqrt()).clamp_max_(1.0);
          ar = at::where(near, exact, ar);
        }
      }
      // pairs i < j: strictly right of the diagonal inside the block row, neither neuron constant
      at::Tensor valid = zero.narrow(0, a0, ra).logical_not().unsqueeze(1) & zero.narrow(0, a0, w).logical_not().unsqueeze(0);
      valid = valid & at::ones({ra, w}, valid.options()).triu(1);
      at::Tensor v = ar.masked_select(valid);
      // np.histogram's bins: [e_i, e_{i+1}), the last one closed.
      at::Tensor idx = (at::bucketize(v, edges_dev, /*out_int32=*/false, /*right=*/true) - 1).clamp_(0, o_.bins - 1);
      hist.add_(at::bincount(idx, {}, o_.bins));
      if (o_.top_k > 0 && v.numel() > 0) {
        at::Tensor flat = ar.masked_fill(valid.logical_not(), -1.0).reshape({-1});
        auto [tv, ti] = flat.topk(std::min<int64_t>(o_.top_k, v.numel()));
        top_v.push_back(tv);
        top_i.push_back(at::floor_divide(ti, w) + a0);
        top_j.push_back(at::remainder(ti, w) + a0);
      }
      if (cluster) {
        at::Tensor dist = (1.0 - ar).masked_fill_(valid.logical_not(), 2.0).cpu().contiguous();
        const double* p = dist.data_ptr<double>();
        for (int64_t i = 0; i < ra; ++i) {
          const int64_t gi = a0 + i;
          const int64_t row = gi * n - gi * (gi + 1) / 2 - gi - 1;  // condensed index of (gi, j) = row + j
          for (int64_t c = i + 1; c < w; ++c) condensed[static_cast<size_t>(row + a0 + c)] = p[i * w + c];
        }
      }
    }
  }
  const int64_t counted = hist.sum().item<int64_t>();
  r["histogram"] = hist.cpu();
  r["pairs_counted"] = scalar(counted);
  r["pairs_excluded"] = scalar(n * (n - 1) / 2 - counted);
  r["zero_variance"] = zero.nonzero().reshape({-1}).cpu();
  if (!top_v.empty()) {
    at::Tensor v = at::cat(top_v), i = at::cat(top_i), j = at::cat(top_j);
    auto [tv, ti] = v.topk(std::min<int64_t>(o_.top_k, v.numel()));
    r["top_values"] = tv.cpu();
    r["top_i"] = i.index_select(0, ti).cpu();
    r["top_j"] = j.index_select(0, ti).cpu();
  }
  if (cluster) {
    std::vector<int64_t> labels = average_linkage_clusters(std::move(condensed), n, o_.cluster_threshold);
    at::Tensor lab = at::empty({n}, at::kLong);
    std::copy(labels.begin(), labels.end(), lab.data_ptr<int64_t>());
    r["cluster"] = lab;
    r["independent_neurons"] = scalar(n ? *std::max_element(labels.begin(), labels.end()) + 1 : int64_t{0});
  }
  return r;
}

}  // namespace qinterp::analysis
