#pragma once
// How the library reports bad input, in both of its builds: INVOLUTION_CHECK(cond, parts...)
// throws with the message made of `parts` (strings, numbers, dtypes, and size lists printed as
// "[2, 3]"), nothing added. The wheel's library (INVOLUTION_STABLE_ABI, PyTorch's stable ABI)
// throws std::runtime_error, which reaches Python as a RuntimeError with the message unchanged;
// the CMake library (full libtorch) throws c10::Error, as every ATen check does, so C++ callers
// can catch it as such.

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#include <sstream>
#include <string>
#include <vector>

#ifdef INVOLUTION_STABLE_ABI
#include <stdexcept>
#else
#include <c10/util/Exception.h>
#endif

namespace involution {
namespace detail {

template <typename T>
void print_part(std::ostream& os, const T& value) {
  os << value;
}

inline void print_part(std::ostream& os, c10::ScalarType type) { os << c10::toString(type); }

template <typename T>
void print_part(std::ostream& os, torch::headeronly::HeaderOnlyArrayRef<T> list) {
  os << '[';
  for (size_t i = 0; i < list.size(); ++i) os << (i ? ", " : "") << list[i];
  os << ']';
}

template <typename T>
void print_part(std::ostream& os, const std::vector<T>& list) {
  print_part(os, torch::headeronly::HeaderOnlyArrayRef<T>(list));
}

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream os;
  (print_part(os, parts), ...);
  return os.str();
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
#ifdef INVOLUTION_STABLE_ABI
  throw std::runtime_error(message(parts...));
#else
  TORCH_CHECK(false, message(parts...));
  __builtin_unreachable();
#endif
}

}  // namespace detail
}  // namespace involution

#define INVOLUTION_CHECK(cond, ...)                      \
  do {                                                   \
    if (__builtin_expect(!static_cast<bool>(cond), 0)) { \
      ::involution::detail::fail(__VA_ARGS__);           \
    }                                                    \
  } while (false)
