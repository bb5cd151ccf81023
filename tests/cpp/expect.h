// EXPECT(cond, fmt, ...): a failed check prints where and why (the first 20) and counts; main returns non-zero.
#pragma once

#include <cstdio>

namespace fastsde_test {
inline int g_failures = 0;
}  // namespace fastsde_test

#define EXPECT(cond, ...)                                                       \
  do {                                                                          \
    if (!(cond)) {                                                              \
      if (++fastsde_test::g_failures <= 20) {                                   \
        std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                                      \
        std::fprintf(stderr, "\n");                                             \
      }                                                                         \
    }                                                                           \
  } while (0)
