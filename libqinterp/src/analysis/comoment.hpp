// The CPU kernel behind Correlation::update for float32 activations (not installed). It needs
// AVX2 and FMA, checked at run time. The ATen path in correlation.cpp is its reference: it is the
// fallback on other CPUs, for float64 input and on GPUs, and tests compare the two.
//
// Why a kernel of our own: M2 is symmetric, so only the upper triangle needs products. A BLAS
// call per block row also computes the lower half of each diagonal block, writes a float32
// product that is then added to the float64 state in a second pass, and corrects it with two
// further rank-1 passes. This kernel skips micro-tiles below the diagonal and adds the float32
// products and both rank-1 corrections to the float64 state in one store.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qinterp::analysis::detail {

// Packed chunk: nb tokens × n neurons, centred, in panels of 16 neurons, so that 16 neighbouring
// neurons of one token are one 64-byte line:
//   packed[g][t][l] = x[t][16 g + l] − shift[16 g + l]   (float32; 0 where 16 g + l ≥ n),
// g < ceil(n / 16), t < nb.
constexpr int64_t kComomentPanel = 16;

bool comoment_kernel_available();

// Packs panels [g0, g1) of x (float32 row-major [nb, n]) and adds each column's sum of the packed
// values, in float64, to colsum[16 g + l] (l < 16, so colsum holds ceil(n / 16) × 16 values).
// colmax[16 g + l] = max_t |packed[g][t][l]| (inf where x − shift overflowed float32).
void comoment_pack(const float* x, int64_t nb, int64_t n, const float* shift, float* packed, double* colsum,
                   float* colmax, int64_t g0, int64_t g1);

// Neurons whose centred values lie beyond [2^-40, 2^40] in magnitude would lose their float32
// products to underflow (below about 1e-19 they vanish) or overflow (above about 4e17). Such a
// neuron is scaled by a power of two for the products and unscaled exactly in float64 when they
// are added to the state. Powers of two change no rounding, so the result is what float32 with an
// unbounded exponent would give, and bit for bit the same as before for neurons in range.
struct RangeScales {
  bool any = false;             // some neuron is scaled
  bool overflow = false;        // some centred value is beyond float32: compute in float64
  std::vector<float> scale;     // [n], 1 where in range
  std::vector<double> unscale;  // [n], 1 / scale
};
// From the per-neuron max |centred value| (n values; inf marks an overflow).
RangeScales range_scales(const float* absmax, int64_t n);

// packed[g][t][l] *= scale[16 g + l] for the panels [g0, g1) that hold a scaled neuron.
void comoment_rescale(float* packed, int64_t nb, int64_t n, const float* scale, int64_t g0, int64_t g1);

// One block row of M2: rows a0 .. a0 + ra, columns a0 .. a0 + w (= n), float64 row-major
// [ra, w]. For the entries on or above the diagonal it adds
//   Σ_t packed[t][a0 + i] · packed[t][a0 + j] (· unscale[a0 + i] · unscale[a0 + j]) + alpha · u[a0 + i] · u[a0 + j] + beta · v[a0 + i] · v[a0 + j]
// (v may be null). The products are summed in float32 over the chunk, as a float32 GEMM would
// sum them, and added to the float64 state once.
struct ComomentRow {
  int64_t a0, ra, w;
  double* m2;
  const double* u;
  double alpha;
  const double* v;
  double beta;
  const double* unscale = nullptr;  // [n] or null: product (i, j) is multiplied by unscale[i] · unscale[j]
};

// Work space: `scratch` is shared by the parts of one row (each writes its own panels),
// `apack` belongs to one part.
size_t comoment_scratch_floats(int64_t a0, int64_t ra, int64_t w, int64_t nb);
size_t comoment_apack_floats(int64_t ra);

// Part `part` of `parts` handles the column panels g with g ≡ part (mod parts): the diagonal's
// cheap panels fall to every part alike.
void comoment_row(const float* packed, int64_t nb, const ComomentRow& row, float* scratch, float* apack,
                  int64_t part, int64_t parts);

// After all parts of a row: the lower half of its diagonal block becomes the mirror of the upper
// half, so that the stored block row is what a full product would give.
void comoment_mirror(const ComomentRow& row);

}  // namespace qinterp::analysis::detail
