# Finds LibTorch. Unless Torch_DIR is given, asks the Python interpreter (Python_EXECUTABLE, the
# virtual environment's python when set up by scripts/setup.sh) where its torch wheel keeps its
# CMake files (torch.utils.cmake_prefix_path), and which CUDA that torch was built for.
# Sets QINTERP_TORCH_VERSION, QINTERP_TORCH_CUDA ("" for a CPU-only torch), TORCH_* variables.
if(NOT Python_EXECUTABLE)
  find_program(Python_EXECUTABLE NAMES python3 python)
endif()
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import torch; print(torch.utils.cmake_prefix_path); print(torch.__version__); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _qt_out RESULT_VARIABLE _qt_rc ERROR_VARIABLE _qt_err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _qt_rc EQUAL 0)
  message(FATAL_ERROR "qinterp needs torch: '${Python_EXECUTABLE} -c \"import torch\"' failed:\n${_qt_err}\n"
                      "Run scripts/setup.sh (or make test), or pass -DPython_EXECUTABLE=/path/to/venv/bin/python")
endif()
string(REPLACE "\n" ";" _qt_lines "${_qt_out}")
list(GET _qt_lines 0 _qt_prefix)
list(GET _qt_lines 1 QINTERP_TORCH_VERSION)
list(LENGTH _qt_lines _qt_n)
set(QINTERP_TORCH_CUDA "")
if(_qt_n GREATER 2)
  list(GET _qt_lines 2 QINTERP_TORCH_CUDA)
endif()
list(APPEND CMAKE_PREFIX_PATH "${_qt_prefix}")
get_filename_component(QINTERP_TORCH_ROOT "${_qt_prefix}/../.." ABSOLUTE)
