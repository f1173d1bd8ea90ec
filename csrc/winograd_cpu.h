// CPU transforms of the Winograd F(4x4, 3x3) convolution (3x3, stride 1, padding 1) that
// glam_fast.winograd runs between oneDNN GEMMs: 36 GEMMs (one per position of the 6x6 transformed
// tile) at 2.25 multiplications per output instead of 9. Plain C++ (no torch headers).
#pragma once

#include <cstdint>

namespace glam_fast {

// Channels per vector step: the transforms need C % kWinogradChannelStep == 0.
constexpr int64_t kWinogradChannelStep = 16;

inline int64_t winograd_tiles(int64_t batch, int64_t height, int64_t width) {
  return batch * ((height + 3) / 4) * ((width + 3) / 4);
}

// x: (B, H, W, C) NHWC. v: 36 blocks, block k at v + k * block_stride holding (T, C) rows, tile
// t = (b * tiles_h + i) * tiles_w + j covering outputs (4i.., 4j..): v_k = (B^T d B)_k of the
// zero-padded 6x6 input patch d at rows 4i-1.., columns 4j-1...
struct WinogradInputArgs {
  const float* x;
  float* v;
  int64_t batch, height, width, channels, block_stride;
};
void winograd_input_transform(const WinogradInputArgs& args);

// m: 36 pointers to (T, C) GEMM outputs; y: (B, H, W, C) NHWC = relu(A^T m A + bias) (the 4x4
// output tile clipped at the map's edge).
struct WinogradOutputArgs {
  const float* const* m;
  const float* bias;
  float* y;
  int64_t batch, height, width, channels;
};
void winograd_output_transform(const WinogradOutputArgs& args);

}  // namespace glam_fast
