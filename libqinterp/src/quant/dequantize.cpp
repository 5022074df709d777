#include "qinterp/quant/dequantize.hpp"

#include <ATen/ATen.h>

#include "qinterp/error.hpp"
#include "qinterp/quant/gguf_blocks.hpp"
#ifdef QINTERP_HAVE_CUDA
#include "../cuda_glue/cuda_glue.hpp"
#endif

namespace qinterp::quant {

#ifdef QINTERP_HAVE_CUDA
bool cuda_built() { return true; }
#else
bool cuda_built() { return false; }
#endif

at::Tensor dequantize_gguf(const at::Tensor& raw, io::GgmlType t, int64_t numel) {
  int64_t be = 0, bb = 0;
  if (!io::ggml_block_layout(t, &be, &bb)) fail("dequantize_gguf: no decoder for ggml type ", io::ggml_type_name(t));
  if (raw.scalar_type() != at::kByte) fail("dequantize_gguf: raw blocks must be a uint8 tensor");
  if (numel % be != 0 || raw.numel() != numel / be * bb)
    fail("dequantize_gguf: ", raw.numel(), " bytes do not hold ", numel, " elements of ",
         io::ggml_type_name(t), " (", bb, " bytes per ", be, " elements)");
  at::Tensor src = raw.contiguous();
  if (src.is_cuda()) {
#ifdef QINTERP_HAVE_CUDA
    return detail::dequantize_gguf_cuda(src, t, numel);
#else
    fail("dequantize_gguf: this qinterp was built without CUDA (QINTERP_WITH_CUDA=OFF)");
#endif
  }
  at::Tensor out = at::empty({numel}, at::TensorOptions().dtype(at::kFloat));
  dequantize_gguf_cpu(t, src.data_ptr<uint8_t>(), out.data_ptr<float>(), numel);
  return out;
}

}  // namespace qinterp::quant
