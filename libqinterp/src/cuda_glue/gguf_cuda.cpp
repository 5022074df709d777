// Torch glue for the CUDA kernels: checks, output allocation, current stream. Compiled only
// when the build has CUDA and torch was built for a matching CUDA.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../../cuda/gguf_dequant.cuh"
#include "cuda_glue.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"

namespace qinterp::quant::detail {

at::Tensor dequantize_gguf_cuda(const at::Tensor& raw, io::GgmlType t, int64_t numel) {
  c10::cuda::CUDAGuard guard(raw.device());
  at::Tensor out = at::empty({numel}, raw.options().dtype(at::kFloat));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t nb = numel / 32;
  cudaError_t err;
  switch (t) {
    case io::GgmlType::Q8_0: err = cuda::dequantize_q8_0(raw.data_ptr(), out.data_ptr<float>(), nb, stream); break;
    case io::GgmlType::Q4_0: err = cuda::dequantize_q4_0(raw.data_ptr(), out.data_ptr<float>(), nb, stream); break;
    case io::GgmlType::Q4_1: err = cuda::dequantize_q4_1(raw.data_ptr(), out.data_ptr<float>(), nb, stream); break;
    default:
      fail("dequantize_gguf: no CUDA decoder for ", io::ggml_type_name(t),
           " yet; decode on the CPU and move the result");
  }
  if (err != cudaSuccess) fail("dequantize_gguf: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace qinterp::quant::detail
