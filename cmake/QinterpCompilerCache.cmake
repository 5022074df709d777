# Use ccache when it is installed: rebuilds after a clean checkout cost seconds, not minutes.
find_program(QINTERP_CCACHE ccache)
if(QINTERP_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${QINTERP_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${QINTERP_CCACHE})
endif()
