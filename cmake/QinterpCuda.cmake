# QINTERP_CUDA_KERNELS: compile libqinterp/cuda (needs only nvcc; no GPU, no torch).
# QINTERP_CUDA_GLUE:    also pass CUDA tensors to them, which needs a torch built for the same
#                       CUDA major version as nvcc (e.g. torch 2.11 on PyPI with nvcc 13.0).
# Default architectures: sm_80 and sm_90 (A100, H100/H200), the machines the GPU tests run on.
set(QINTERP_CUDA_KERNELS OFF)
set(QINTERP_CUDA_GLUE OFF)
if(DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(_qinterp_cuda_archs "${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(_qinterp_cuda_archs 80 90)
endif()
if(NOT QINTERP_WITH_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(QINTERP_CUDA_KERNELS ON)
  elseif(QINTERP_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "QINTERP_WITH_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()

# Torch's CMake files pick their own arch list (and reset CMAKE_CUDA_ARCHITECTURES): give them ours.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
unset(CMAKE_CUDA_ARCHITECTURES)
unset(CMAKE_CUDA_ARCHITECTURES CACHE)
find_package(Torch REQUIRED)

if(QINTERP_CUDA_KERNELS)
  set(CMAKE_CUDA_ARCHITECTURES ${_qinterp_cuda_archs})
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
endif()

if(QINTERP_CUDA_KERNELS AND QINTERP_TORCH_CUDA)
  string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${QINTERP_TORCH_CUDA}")
  string(REGEX MATCH "^[0-9]+" _nvcc_major "${CMAKE_CUDA_COMPILER_VERSION}")
  if(_torch_cuda_major STREQUAL _nvcc_major)
    set(QINTERP_CUDA_GLUE ON)
  else()
    message(STATUS "qinterp: torch is built for CUDA ${QINTERP_TORCH_CUDA} but nvcc is "
                   "${CMAKE_CUDA_COMPILER_VERSION}: the CUDA kernels build, CUDA tensors use the CPU path")
  endif()
endif()
