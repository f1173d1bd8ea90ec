// 2x2 max pooling + concatenation on the CPU (see pool_concat_cpu.h): 16 channels per vector,
// output rows split over the threads.
#include "pool_concat_cpu.h"

#include <algorithm>

#include "cpu_parallel.h"
#include "cpu_vector.h"

namespace glam_fast {
namespace {

using cpu::IVec;
using cpu::load;
using cpu::store;
using cpu::Vec;
static_assert(kPoolConcatChannelStep == cpu::kLanes, "one vector per step of 16 channels");

// max(a, b) with NaN propagated from either, as torch.max_pool2d does: a > b ? a : b (one vmaxps)
// gives b when either is NaN, and a's NaN is put back through its bits (exponent all ones,
// mantissa non-zero: 0x7f800000 - |bits| < 0). No float comparison of a with itself: in a
// target_clones function GCC turned those into scalar code (16 ucomiss per vector).
GLAM_FAST_ALWAYS_INLINE Vec max(Vec a, Vec b) {
  const Vec larger = a > b ? a : b;
  const IVec a_is_nan = (0x7f800000 - ((IVec)a & 0x7fffffff)) >> 31;
  return (Vec)(((IVec)a & a_is_nan) | ((IVec)larger & ~a_is_nan));
}

GLAM_FAST_CPU_CLONES
void pool_rows(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const PoolConcatArgs*>(context);
  const int64_t H = a.height, W = a.width, Ho = H / 2, Wo = W / 2;
  int64_t total = 0;
  for (int64_t c : a.channels) total += c;
  for (int64_t row = first; row < last; ++row) {  // row = b * Ho + i
    const int64_t b = row / Ho, i = row % Ho;
    float* out = a.out + row * Wo * total;
    int64_t offset = 0;
    for (size_t m = 0; m < a.maps.size(); ++m) {
      const int64_t C = a.channels[m];
      const float* top = a.maps[m] + ((b * H + 2 * i) * W) * C;
      const float* bottom = top + W * C;
      for (int64_t j = 0; j < Wo; ++j) {
        for (int64_t c = 0; c < C; c += cpu::kLanes) {
          const int64_t left = 2 * j * C + c, right = left + C;
          const Vec v = max(max(load(top + left), load(top + right)), max(load(bottom + left), load(bottom + right)));
          store(out + j * total + offset + c, v);
        }
      }
      offset += C;
    }
  }
}

}  // namespace

void pool_concat_cpu(const PoolConcatArgs& args) {
  cpu::parallel_ranges(args.batch * (args.height / 2), args.threads, pool_rows, &args);
}

}  // namespace glam_fast
