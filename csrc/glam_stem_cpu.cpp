// GLAM's stem on the CPU (see glam_stem_cpu.h): each output pixel's 16 channels are one vector,
// three multiply-adds of a tap value by a weight vector; output rows split over the threads.
#include "glam_stem_cpu.h"

#include "cpu_parallel.h"
#include "cpu_vector.h"

namespace glam_fast {
namespace {

using cpu::load;
using cpu::store;
using cpu::Vec;
static_assert(kStemCpuChannels == cpu::kLanes, "one vector per output pixel");

GLAM_FAST_CPU_CLONES
void stem_rows(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const StemCpuArgs*>(context);
  const int64_t H = a.height, W = a.width;
  for (int64_t row = first; row < last; ++row) {  // row = b * 2H + h2
    const int64_t b = row / (2 * H), h2 = row % (2 * H);
    const bool vertical = h2 < H;  // rows < H: conv1a (taps down the column), then conv1b (along the row)
    const int64_t h = vertical ? h2 : h2 - H;
    const float* weight = a.weight + (vertical ? 0 : 3 * kStemCpuChannels);
    const Vec w0 = load(weight), w1 = load(weight + kStemCpuChannels), w2 = load(weight + 2 * kStemCpuChannels);
    const Vec bias = load(a.bias + (vertical ? 0 : kStemCpuChannels));
    const float* x = a.x + (b * H + h) * W;
    const float* above = h > 0 ? x - W : nullptr;
    const float* below = h + 1 < H ? x + W : nullptr;
    float* out = a.out + row * W * kStemCpuChannels;
    for (int64_t w = 0; w < W; ++w) {
      float t0, t2;
      if (vertical) {
        t0 = above ? above[w] : 0.f, t2 = below ? below[w] : 0.f;
      } else {
        t0 = w > 0 ? x[w - 1] : 0.f, t2 = w + 1 < W ? x[w + 1] : 0.f;
      }
      const Vec y = bias + w0 * t0 + w1 * x[w] + w2 * t2;
      store(out + w * kStemCpuChannels, cpu::relu(y));
    }
  }
}

}  // namespace

void glam_stem_cpu(const StemCpuArgs& args) { cpu::parallel_ranges(args.batch * 2 * args.height, args.threads, stem_rows, &args); }

}  // namespace glam_fast
