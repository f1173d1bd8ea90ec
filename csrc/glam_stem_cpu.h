// GLAM's stem for CPU inference: relu(conv1a(x)) and relu(conv1b(x)) (BatchNorm folded into
// the taps; 1 -> 16 channels, 3 taps down each column and along each row, zero padding) written
// height-concatenated and channels-last for the first multi-scale block, in one pass:
// (B, 1, H, W) -> (B, 2H, W, 16). Plain C++ (no torch headers); glam_fast/glam_stem_cpu.py runs it.
#pragma once

#include <cstdint>

namespace glam_fast {

constexpr int64_t kStemCpuChannels = 16;

struct StemCpuArgs {
  const float* x;       // (B, H, W)
  const float* weight;  // (2, 3, 16): [conv1a, conv1b][tap][channel]
  const float* bias;    // (2, 16)
  float* out;           // (B, 2H, W, 16)
  int64_t batch, height, width;
  int threads;  // PyTorch OpenMP threads sharing the output rows (cpu_parallel.h)
};
void glam_stem_cpu(const StemCpuArgs& args);

}  // namespace glam_fast
