// Register-tile GEMM for the CPU kernels (gmlp_head_cpu.cpp, winograd_cpu.cpp): always-inline
// templates, compiled into each caller's AVX-512 / AVX2 / baseline clone. A tile is up to 8 rows
// x 32 columns (16 vector accumulators) over the whole K: per k, two vector loads of B, one
// broadcast of A per row, 16 FMAs. The caller's epilogue gets each finished vector in registers.
#pragma once

#include <cstdint>

#include "cpu_vector.h"

namespace glam_fast {
namespace cpu {

// Row-major A (rows x K, leading dimension lda) times B (K x N, ldb), N a multiple of kLanes.
struct Operands {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb, k;
};

// acc = A[row : row + MR] B[:, NV * kLanes columns from b], then epilogue(row', column', acc) for
// each of its vectors (column: the first of those columns in the epilogue's numbering).
template <int MR, int NV, typename Epilogue>
GLAM_FAST_ALWAYS_INLINE void gemm_tile(const Operands& op, const float* b, int64_t row, int64_t column, const Epilogue& epilogue) {
  Vec acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec{};
  }
  const float* a = op.a + row * op.lda;
  for (int64_t k = 0; k < op.k; ++k) {
    Vec bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = load(b + k * op.ldb + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const float ar = a[r * op.lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * bk[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) epilogue(row + r, column + v * kLanes, acc[r][v]);
  }
}

template <int NV, typename Epilogue>
GLAM_FAST_ALWAYS_INLINE void gemm_column_panel(const Operands& op, const float* b, int64_t first_row, int64_t last_row, int64_t column,
                                               const Epilogue& epilogue) {
  int64_t row = first_row;
  for (; row + 8 <= last_row; row += 8) gemm_tile<8, NV>(op, b, row, column, epilogue);
  if (row + 4 <= last_row) gemm_tile<4, NV>(op, b, row, column, epilogue), row += 4;
  if (row + 2 <= last_row) gemm_tile<2, NV>(op, b, row, column, epilogue), row += 2;
  if (row < last_row) gemm_tile<1, NV>(op, b, row, column, epilogue);
}

// epilogue(row, column, A[row] B[:, column : column + kLanes]) for rows [first_row, last_row) and
// every column of B (columns a multiple of kLanes), a panel of 32 columns at a time.
template <typename Epilogue>
GLAM_FAST_ALWAYS_INLINE void gemm(const Operands& op, int64_t first_row, int64_t last_row, int64_t columns, const Epilogue& epilogue) {
  int64_t column = 0;
  for (; column + 2 * kLanes <= columns; column += 2 * kLanes) gemm_column_panel<2>(op, op.b + column, first_row, last_row, column, epilogue);
  if (column < columns) gemm_column_panel<1>(op, op.b + column, first_row, last_row, column, epilogue);
}

// The same with B packed in column panels (gemm_packed_size): the panel of columns c.. is K x w
// contiguous floats at b + c * K, w = 32 (the last one 16 when columns % 32 == 16). Streaming a
// panel then walks consecutive cache lines, where rows of a wide B a power-of-two apart would
// compete for the same L1 sets. op.ldb is ignored.
template <typename Epilogue>
GLAM_FAST_ALWAYS_INLINE void gemm_packed(const Operands& op, int64_t first_row, int64_t last_row, int64_t columns, const Epilogue& epilogue) {
  Operands panel = op;
  int64_t column = 0;
  panel.ldb = 2 * kLanes;
  for (; column + 2 * kLanes <= columns; column += 2 * kLanes) gemm_column_panel<2>(panel, op.b + column * op.k, first_row, last_row, column, epilogue);
  panel.ldb = kLanes;
  if (column < columns) gemm_column_panel<1>(panel, op.b + column * op.k, first_row, last_row, column, epilogue);
}

}  // namespace cpu
}  // namespace glam_fast
