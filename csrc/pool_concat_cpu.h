// 2x2 max pooling (stride 2, floor) of several channels-last maps written side by side along
// channels, for CPU inference (GLAM's multi-scale blocks pool each branch before the
// concatenation): maps i (B, H, W, C_i) -> (B, H / 2, W / 2, sum C_i), in one pass instead of
// one pooling per map and a concatenation. Plain C++ (no torch headers).
#pragma once

#include <cstdint>
#include <vector>

namespace glam_fast {

// Every C_i a multiple of this.
constexpr int64_t kPoolConcatChannelStep = 16;

struct PoolConcatArgs {
  std::vector<const float*> maps;  // each (B, H, W, C_i), contiguous
  std::vector<int64_t> channels;   // C_i
  float* out;                      // (B, H / 2, W / 2, sum C_i)
  int64_t batch, height, width;
  int threads;  // PyTorch OpenMP threads sharing the output rows (cpu_parallel.h)
};
void pool_concat_cpu(const PoolConcatArgs& args);

}  // namespace glam_fast
