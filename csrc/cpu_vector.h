// What the CPU kernels (winograd_cpu.cpp, gmlp_head_cpu.cpp) share: a 16-float vector type
// (GCC vector extensions: AVX-512 registers in the AVX-512 clone, pairs of AVX2 ones in the AVX2
// clone, scalar code in the baseline one), its loads and stores, and the clone attribute that
// builds an entry point for all three and picks one at load time.
#pragma once

#include <cstdint>
#include <cstring>

namespace glam_fast {
namespace cpu {

constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(64)));
typedef int32_t IVec __attribute__((vector_size(64)));
// Vec values never cross a call boundary (every helper is inlined), so the ABI note GCC gives for
// 64-byte vectors in a baseline-ISA build does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define GLAM_FAST_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GLAM_FAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GLAM_FAST_CPU_CLONES
#endif

GLAM_FAST_ALWAYS_INLINE Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
GLAM_FAST_ALWAYS_INLINE void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
// The first n (< kLanes) lanes; the others are zero on load and left untouched on store.
GLAM_FAST_ALWAYS_INLINE Vec load_first(const float* p, int64_t n) {
  Vec v = {};
  std::memcpy(&v, p, sizeof(float) * n);
  return v;
}
GLAM_FAST_ALWAYS_INLINE void store_first(float* p, Vec v, int64_t n) { std::memcpy(p, &v, sizeof(float) * n); }
GLAM_FAST_ALWAYS_INLINE Vec splat(float x) { return Vec{} + x; }
// max(x, 0) that keeps NaN (as torch.relu): x < 0 is false for NaN.
GLAM_FAST_ALWAYS_INLINE Vec relu(Vec x) { return x < Vec{} ? Vec{} : x; }

}  // namespace cpu
}  // namespace glam_fast
