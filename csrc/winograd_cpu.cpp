// Winograd F(4x4, 3x3) input and output transforms on the CPU (see winograd_cpu.h). Memory-bound
// loops over tiles, vectorised over 16 channels with GCC vector types; built for AVX-512, AVX2
// and baseline x86-64, chosen at load time (target_clones). Single-threaded: run between oneDNN
// calls, a second thread shared a core with PyTorch's spin-waiting OpenMP workers and was slower
// (glam_fast/winograd.py).
#include "winograd_cpu.h"

#include <algorithm>
#include <cstring>

namespace glam_fast {
namespace {

typedef float Vec __attribute__((vector_size(64)));  // 16 floats = kWinogradChannelStep
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

// B^T d for one column of a 6x6 tile (d[0..5] the rows), into out[0..5] with stride `step`.
#define WINOGRAD_BT(d, out, step)                              \
  do {                                                         \
    (out)[0 * (step)] = 4.f * (d)[0] - 5.f * (d)[2] + (d)[4];  \
    (out)[1 * (step)] = -4.f * ((d)[1] + (d)[2]) + (d)[3] + (d)[4]; \
    (out)[2 * (step)] = 4.f * ((d)[1] - (d)[2]) - (d)[3] + (d)[4];  \
    (out)[3 * (step)] = 2.f * ((d)[3] - (d)[1]) - (d)[2] + (d)[4];  \
    (out)[4 * (step)] = 2.f * ((d)[1] - (d)[3]) - (d)[2] + (d)[4];  \
    (out)[5 * (step)] = 4.f * (d)[1] - 5.f * (d)[3] + (d)[5];  \
  } while (0)

// A^T m for one column of 6 values (m[0..5]), into out[0..3] with stride `step`.
#define WINOGRAD_AT(m, out, step)                                        \
  do {                                                                   \
    (out)[0 * (step)] = (m)[0] + (m)[1] + (m)[2] + (m)[3] + (m)[4];      \
    (out)[1 * (step)] = (m)[1] - (m)[2] + 2.f * ((m)[3] - (m)[4]);       \
    (out)[2 * (step)] = (m)[1] + (m)[2] + 4.f * ((m)[3] + (m)[4]);       \
    (out)[3 * (step)] = (m)[1] - (m)[2] + 8.f * ((m)[3] - (m)[4]) + (m)[5]; \
  } while (0)

// Where tile t of a (B, H, W) map lies: item b, tile row i, tile column j (outputs 4i.., 4j..).
struct TileIndex {
  int64_t b, i, j;
  TileIndex(int64_t t, int64_t height, int64_t width) {
    const int64_t tiles_h = (height + 3) / 4, tiles_w = (width + 3) / 4;
    b = t / (tiles_h * tiles_w), i = (t / tiles_w) % tiles_h, j = t % tiles_w;
  }
};

GLAM_FAST_CPU_CLONES
void input_tiles(const WinogradInputArgs a) {
  const int64_t C = a.channels, tiles = winograd_tiles(a.batch, a.height, a.width);
  const Vec zero = {};
  for (int64_t t = 0; t < tiles; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const float* rows[6];  // input row of each tile row, nullptr in the zero padding
    bool column_in[6];
    for (int r = 0; r < 6; ++r) {
      const int64_t y = 4 * i - 1 + r;
      rows[r] = (y >= 0 && y < a.height) ? a.x + (b * a.height + y) * a.width * C : nullptr;
    }
    for (int s = 0; s < 6; ++s) column_in[s] = 4 * j - 1 + s >= 0 && 4 * j - 1 + s < a.width;
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec u[6][6];  // u = B^T d (rows transformed), u[row][column]
      for (int s = 0; s < 6; ++s) {
        Vec d[6];
        for (int r = 0; r < 6; ++r) d[r] = (rows[r] && column_in[s]) ? load(rows[r] + (4 * j - 1 + s) * C + c) : zero;
        WINOGRAD_BT(d, &u[0][s], 6);
      }
      for (int r = 0; r < 6; ++r) {  // v = u B, position k = 6 r + s
        Vec v[6];
        WINOGRAD_BT(u[r], v, 1);
        float* out = a.v + 6 * r * a.block_stride + t * C + c;
        for (int s = 0; s < 6; ++s) store(out + s * a.block_stride, v[s]);
      }
    }
  }
}

GLAM_FAST_CPU_CLONES
void output_tiles(const WinogradOutputArgs a) {
  const int64_t C = a.channels, tiles = winograd_tiles(a.batch, a.height, a.width);
  const Vec zero = {};
  for (int64_t t = 0; t < tiles; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const int64_t rows_out = std::min<int64_t>(4, a.height - 4 * i), columns_out = std::min<int64_t>(4, a.width - 4 * j);
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec p[6][4];  // p = m A, p[row][output column]
      for (int r = 0; r < 6; ++r) {
        Vec m[6];
        for (int s = 0; s < 6; ++s) m[s] = load(a.m[6 * r + s] + t * C + c);
        WINOGRAD_AT(m, p[r], 1);
      }
      const Vec bias = load(a.bias + c);
      for (int s = 0; s < columns_out; ++s) {
        Vec column[6], y[4];
        for (int r = 0; r < 6; ++r) column[r] = p[r][s];
        WINOGRAD_AT(column, y, 1);
        for (int r = 0; r < rows_out; ++r) {
          const Vec value = y[r] + bias;
          store(a.y + ((b * a.height + 4 * i + r) * a.width + 4 * j + s) * C + c, value > zero ? value : zero);
        }
      }
    }
  }
}

}  // namespace

void winograd_input_transform(const WinogradInputArgs& args) {
  input_tiles(args);
}

void winograd_output_transform(const WinogradOutputArgs& args) {
  output_tiles(args);
}

}  // namespace glam_fast
