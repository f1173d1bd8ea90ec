// The CPU parts of the Winograd convolutions F(4x4, 3x3) and F(4x4, 5x5) (stride 1, "same"
// padding) that glam_fast.winograd runs: the input and output transforms and the GEMMs between
// them, one per position of the transformed tile (6x6 = 36 for 3x3 kernels, 8x8 = 64 for 5x5),
// at 2.25 (3x3) or 4 (5x5) multiplications per output instead of 9 or 25. Plain C++ (no torch
// headers).
#pragma once

#include <cstdint>

namespace glam_fast {

// Channels per vector step: the transforms need C % kWinogradChannelStep == 0.
constexpr int64_t kWinogradChannelStep = 16;

// Every form computes 4x4 output tiles; the input tile is (kernel_size + 3) square.
inline int64_t winograd_tiles(int64_t batch, int64_t height, int64_t width) {
  return batch * ((height + 3) / 4) * ((width + 3) / 4);
}
inline bool winograd_kernel_supported(int64_t kernel_size) { return kernel_size == 3 || kernel_size == 5; }
inline int64_t winograd_positions(int64_t kernel_size) { return (kernel_size + 3) * (kernel_size + 3); }

// x: (B, H, W, C) NHWC. v: P = winograd_positions(kernel_size) blocks, block k at
// v + k * block_stride holding (T, C) rows, tile t = (b * tiles_h + i) * tiles_w + j covering
// outputs (4i.., 4j..): v_k = (B^T d B)_k of the zero-padded input patch d (kernel_size + 3
// square) at rows 4i - p.., columns 4j - p.., p = (kernel_size - 1) / 2.
struct WinogradInputArgs {
  const float* x;
  float* v;
  int64_t batch, height, width, channels, block_stride, kernel_size;
  int threads;
};
void winograd_input_transform(const WinogradInputArgs& args);

// threads (both transforms): how many of PyTorch's OpenMP threads share the tiles; 1, or no
// OpenMP runtime found (cpu::openmp_runtime() == ""), runs them on the calling thread.

// m: P pointers to (T, C) GEMM outputs; y: (B, H, W, C) NHWC = relu(A^T m A + bias) (the 4x4
// output tile clipped at the map's edge).
struct WinogradOutputArgs {
  const float* const* m;
  const float* bias;
  float* y;
  int64_t batch, height, width, channels, kernel_size;
  int threads;
};
void winograd_output_transform(const WinogradOutputArgs& args);

// The GEMMs between the transforms: m_k = v_k u_k for each position k, v (P, T, C_in),
// m (P, T, C_out), all contiguous; C_out % kWinogradChannelStep == 0; u_k (C_in, C_out) packed
// in column panels (cpu_gemm.h's gemm_packed: the panel of columns c.. is C_in x 32 floats at
// u_k + c * C_in, the last one 16 wide when C_out % 32 == 16), u_k at u + k * C_in * C_out.
// Work items (position, block of kWinogradGemmRows tiles) split over `threads` threads.
constexpr int64_t kWinogradGemmRows = 64;
struct WinogradGemmArgs {
  const float* v;
  const float* u;
  float* m;
  int64_t positions, tiles, in_channels, out_channels;
  int threads;
};
void winograd_gemm(const WinogradGemmArgs& args);

}  // namespace glam_fast
