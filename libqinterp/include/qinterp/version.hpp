#pragma once
#define QINTERP_VERSION_STRING "0.1.0"
namespace qinterp {
inline const char* version() { return QINTERP_VERSION_STRING; }
}  // namespace qinterp
