// Torch glue for the 4-bit CUDA kernels (libqinterp/cuda/quant4.cu): checks, outputs, current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <utility>

#include "../../cuda/quant4.cuh"
#include "cuda_glue.hpp"
#include "qinterp/error.hpp"

namespace qinterp::quant::detail {

namespace {

cuda::InDType in_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::kF32;
    case at::kHalf: return cuda::kF16;
    case at::kBFloat16: return cuda::kBF16;
    default: fail("4-bit CUDA kernels take float32, float16 or bfloat16, got ", c10::toString(t));
  }
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(what, ": CUDA error: ", cudaGetErrorString(e));
}

}  // namespace

std::pair<at::Tensor, at::Tensor> quantize_4bit_cuda(const at::Tensor& x, int type, int64_t block) {
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel(), nb = (n + block - 1) / block;
  at::Tensor packed = at::empty({(n + 1) / 2, 1}, x.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({nb}, x.options().dtype(at::kFloat));
  check(cuda::quantize_4bit(x.data_ptr(), in_dtype(x.scalar_type()), n, static_cast<int>(block), type,
                            packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), at::cuda::getCurrentCUDAStream()),
        "quantize_4bit");
  return {packed, absmax};
}

at::Tensor dequantize_4bit_cuda(const at::Tensor& packed, const at::Tensor& absmax, int type, int64_t block,
                                int64_t n, at::ScalarType dtype) {
  c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor out = at::empty({n}, packed.options().dtype(dtype));
  check(cuda::dequantize_4bit(packed.data_ptr<uint8_t>(), absmax.to(packed.device()).data_ptr<float>(), n,
                              static_cast<int>(block), type, out.data_ptr(), in_dtype(dtype),
                              at::cuda::getCurrentCUDAStream()),
        "dequantize_4bit");
  return out;
}

at::Tensor gemv_4bit_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                          const at::Tensor& qabs, const at::Tensor& absmax2, float offset, const at::Tensor& code2,
                          int type, int64_t rows, int64_t cols, int64_t block) {
  c10::cuda::CUDAGuard guard(x.device());
  // The kernel reads every table through raw pointers on x's device: all must live there.
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{packed, "packed weight"}, {absmax, "absmax"},
                                {qabs, "quantized absmax"}, {absmax2, "absmax scales"}, {code2, "absmax code"}}) {
    if (!t.defined()) continue;
    if (!t.is_cuda()) fail("gemv_4bit: the ", name, " is on the CPU and the input on CUDA; move the model");
    if (t.device() != x.device())
      fail("gemv_4bit: the ", name, " is on ", t.device().str(), " and the input on ", x.device().str(),
           "; move the input or the model so that both are on one device");
  }
  at::Tensor y = at::empty({x.size(0), rows}, x.options());
  check(cuda::gemv_4bit(packed.data_ptr<uint8_t>(), absmax.defined() ? absmax.data_ptr<float>() : nullptr,
                        qabs.defined() ? qabs.data_ptr<uint8_t>() : nullptr,
                        absmax2.defined() ? absmax2.data_ptr<float>() : nullptr, offset,
                        code2.defined() ? code2.data_ptr<float>() : nullptr, rows, cols, static_cast<int>(block), type,
                        x.data_ptr(), y.data_ptr(), in_dtype(x.scalar_type()), x.size(0),
                        at::cuda::getCurrentCUDAStream()),
        "gemv_4bit");
  return y;
}

}  // namespace qinterp::quant::detail
