// Library-wide definitions.

#include <involution/involution.h>

namespace involution {

int64_t version() { return 100; }  // 0.1.0

}  // namespace involution
