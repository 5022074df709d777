// The command-line tool's entry point, shared by the executable (main.cpp) and the Python
// module (python -m qinterp). Returns the exit status; prints errors as one line.
#pragma once
#include "qinterp/experiment/runner.hpp"

int qinterp_cli(int argc, char** argv, const qinterp::experiment::Parallel& par = {});
