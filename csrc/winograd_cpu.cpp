// Winograd F(4x4, 3x3) and F(4x4, 5x5) on the CPU (see winograd_cpu.h): the input and output
// transforms, memory-bound loops over tiles vectorised over 16 channels with GCC vector types
// (cpu_vector.h), and the GEMMs between them (cpu_gemm.h's register tiles); built for AVX-512,
// AVX2 and baseline x86-64, chosen at load time (target_clones).
#include "winograd_cpu.h"

#include <algorithm>

#include "cpu_gemm.h"
#include "cpu_parallel.h"
#include "cpu_vector.h"

namespace glam_fast {
namespace {

using cpu::load;
using cpu::store;
using cpu::Vec;
static_assert(cpu::kLanes == kWinogradChannelStep, "the transforms step over channels one vector at a time");

// The transform matrices for interpolation points 0, +-1, +-2 (and +-1/2 for 5x5) and infinity,
// as glam_fast.winograd constructs them (Toom-Cook; every coefficient exact in float).
template <int Kernel>
struct Matrices;
template <>
struct Matrices<3> {
  static constexpr int kTile = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};
template <>
struct Matrices<5> {
  static constexpr int kTile = 8;
  static constexpr float BT[8][8] = {
      {-1, 0, 5.25f, 0, -5.25f, 0, 1, 0},         {0, 1, 1, -4.25f, -4.25f, 1, 1, 0},
      {0, -1, 1, 4.25f, -4.25f, -1, 1, 0},        {0, 0.5f, 0.25f, -2.5f, -1.25f, 2, 1, 0},
      {0, -0.5f, 0.25f, 2.5f, -1.25f, -2, 1, 0},  {0, 2, 4, -2.5f, -5, 0.5f, 1, 0},
      {0, -2, 4, 2.5f, -5, -0.5f, 1, 0},          {0, -1, 0, 5.25f, 0, -5.25f, 0, 1}};
  static constexpr float AT[4][8] = {
      {1, 1, 1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0.5f, -0.5f, 0}, {0, 1, 1, 4, 4, 0.25f, 0.25f, 0}, {0, 1, -1, 8, -8, 0.125f, -0.125f, 1}};
};

// out[i * step] = sum_k M[i][k] in[k]. Unrolled with constant indices, so the zero coefficients
// are skipped at compile time and the +-1 ones need no multiplication.
template <int Rows, int Cols>
GLAM_FAST_ALWAYS_INLINE void apply(const float (&M)[Rows][Cols], const Vec* in, Vec* out, int step) {
#pragma GCC unroll 8
  for (int i = 0; i < Rows; ++i) {
    Vec acc = {};
#pragma GCC unroll 8
    for (int k = 0; k < Cols; ++k) {
      if (M[i][k] == 1.f) {
        acc += in[k];
      } else if (M[i][k] == -1.f) {
        acc -= in[k];
      } else if (M[i][k] != 0.f) {
        acc += M[i][k] * in[k];
      }
    }
    out[i * step] = acc;
  }
}

// Where tile t of a (B, H, W) map lies: item b, tile row i, tile column j (outputs 4i.., 4j..).
struct TileIndex {
  int64_t b, i, j;
  TileIndex(int64_t t, int64_t height, int64_t width) {
    const int64_t tiles_h = (height + 3) / 4, tiles_w = (width + 3) / 4;
    b = t / (tiles_h * tiles_w), i = (t / tiles_w) % tiles_h, j = t % tiles_w;
  }
};

template <int Kernel>
GLAM_FAST_ALWAYS_INLINE void input_tiles(const WinogradInputArgs& a, int64_t first, int64_t last) {
  using M = Matrices<Kernel>;
  constexpr int A = M::kTile, pad = (Kernel - 1) / 2;
  const int64_t C = a.channels;
  const Vec zero = {};
  for (int64_t t = first; t < last; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const float* rows[A];  // input row of each tile row, nullptr in the zero padding
    bool column_in[A];
    for (int r = 0; r < A; ++r) {
      const int64_t y = 4 * i - pad + r;
      rows[r] = (y >= 0 && y < a.height) ? a.x + (b * a.height + y) * a.width * C : nullptr;
    }
    for (int s = 0; s < A; ++s) column_in[s] = 4 * j - pad + s >= 0 && 4 * j - pad + s < a.width;
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec u[A][A];  // u = B^T d (rows transformed), u[row][column]
      for (int s = 0; s < A; ++s) {
        Vec d[A];
        for (int r = 0; r < A; ++r) d[r] = (rows[r] && column_in[s]) ? load(rows[r] + (4 * j - pad + s) * C + c) : zero;
        apply(M::BT, d, &u[0][s], A);
      }
      for (int r = 0; r < A; ++r) {  // v = u B, position k = A r + s
        Vec v[A];
        apply(M::BT, u[r], v, 1);
        float* out = a.v + A * r * a.block_stride + t * C + c;
        for (int s = 0; s < A; ++s) store(out + s * a.block_stride, v[s]);
      }
    }
  }
}

template <int Kernel>
GLAM_FAST_ALWAYS_INLINE void output_tiles(const WinogradOutputArgs& a, int64_t first, int64_t last) {
  using M = Matrices<Kernel>;
  constexpr int A = M::kTile;
  const int64_t C = a.channels;
  for (int64_t t = first; t < last; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const int64_t rows_out = std::min<int64_t>(4, a.height - 4 * i), columns_out = std::min<int64_t>(4, a.width - 4 * j);
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec p[A][4];  // p = m A, p[row][output column]
      for (int r = 0; r < A; ++r) {
        Vec m[A];
        for (int s = 0; s < A; ++s) m[s] = load(a.m[A * r + s] + t * C + c);
        apply(M::AT, m, p[r], 1);
      }
      const Vec bias = load(a.bias + c);
      for (int s = 0; s < columns_out; ++s) {
        Vec column[A], y[4];
        for (int r = 0; r < A; ++r) column[r] = p[r][s];
        apply(M::AT, column, y, 1);
        for (int r = 0; r < rows_out; ++r) {
          const Vec value = y[r] + bias;
          store(a.y + ((b * a.height + 4 * i + r) * a.width + 4 * j + s) * C + c, cpu::relu(value));
        }
      }
    }
  }
}

// One clone set per entry point (target_clones on templates is not portable across GCC versions).
GLAM_FAST_CPU_CLONES
void input_tiles_dispatch(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const WinogradInputArgs*>(context);
  if (a.kernel_size == 3) {
    input_tiles<3>(a, first, last);
  } else {
    input_tiles<5>(a, first, last);
  }
}

GLAM_FAST_CPU_CLONES
void output_tiles_dispatch(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const WinogradOutputArgs*>(context);
  if (a.kernel_size == 3) {
    output_tiles<3>(a, first, last);
  } else {
    output_tiles<5>(a, first, last);
  }
}

struct StoreEpilogue {
  float* m;
  int64_t ld;
  GLAM_FAST_ALWAYS_INLINE void operator()(int64_t row, int64_t column, Vec acc) const { store(m + row * ld + column, acc); }
};

GLAM_FAST_CPU_CLONES
void gemm_items(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const WinogradGemmArgs*>(context);
  const int64_t blocks = (a.tiles + kWinogradGemmRows - 1) / kWinogradGemmRows;
  for (int64_t item = first; item < last; ++item) {
    const int64_t k = item / blocks, row0 = item % blocks * kWinogradGemmRows, row1 = std::min(a.tiles, row0 + kWinogradGemmRows);
    const cpu::Operands op{a.v + k * a.tiles * a.in_channels, a.in_channels, a.u + k * a.in_channels * a.out_channels, 0, a.in_channels};
    cpu::gemm_packed(op, row0, row1, a.out_channels, StoreEpilogue{a.m + k * a.tiles * a.out_channels, a.out_channels});
  }
}

}  // namespace

// The tiles are split over PyTorch's own OpenMP threads (cpu::parallel_ranges): threads of a
// second pool would share the cores with PyTorch's spin-waiting workers.
void winograd_input_transform(const WinogradInputArgs& args) {
  cpu::parallel_ranges(winograd_tiles(args.batch, args.height, args.width), args.threads, input_tiles_dispatch, &args);
}

void winograd_output_transform(const WinogradOutputArgs& args) {
  cpu::parallel_ranges(winograd_tiles(args.batch, args.height, args.width), args.threads, output_tiles_dispatch, &args);
}

void winograd_gemm(const WinogradGemmArgs& args) {
  const int64_t blocks = (args.tiles + kWinogradGemmRows - 1) / kWinogradGemmRows;
  cpu::parallel_ranges(args.positions * blocks, args.threads, gemm_items, &args);
}

}  // namespace glam_fast
