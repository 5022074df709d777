#include "cli.hpp"

int main(int argc, char** argv) { return qinterp_cli(argc, argv); }
