// Library-wide definitions.

#include <involution/involution.h>

// The build passes the version of CMakeLists.txt's project() (setup.py reads it from there).
#ifndef INVOLUTION_VERSION_NUMBER
#error "build with -DINVOLUTION_VERSION_NUMBER=<major * 10000 + minor * 100 + patch>"
#endif

namespace involution {

int64_t version() { return INVOLUTION_VERSION_NUMBER; }

}  // namespace involution
