// 5x5 'same' convolution CIN -> COUT + bias + ReLU (+ 2x2 max-pool), NHWC, fp16/bf16 on tensor
// cores (mma.sync.m16n8k16, fp32 accumulation) as an implicit GEMM:
//   M = output pixels (with pooling: pooled pixel x 4 sub-positions), N = COUT,
//   K = 25 taps x CIN channels, tap-major (k = (kh * 5 + kw) * CIN + c), padded to 32.
// A block of 4 warps computes a kBlockM x COUT tile; each warp 32 rows x kWarpN columns. K runs
// in tiles of 32 through a 3-stage cp.async pipeline: A rows are gathered from the input (one
// 16-byte segment = 8 channels of one tap; zeros outside the image), B rows from the packed
// weights (COUT, KPAD). With pooling, a warp's 32 rows are 8 pooled pixels x 4 sub-positions
// ordered so that the four values of one window land in the same thread's accumulators (rows
// g, g + 8 of both m16 tiles), and the max-pool is a register reduction in the epilogue.
//
// Everything a thread does is a __host__ __device__ member (init, load_stage, fragment loads,
// epilogue); the kernel orchestrates them with the pipeline and barriers, and the host emulation
// (conv5x5_bias_relu.cu) runs the same members in program order, with mma_m16n8k16_host
// standing in for the warp-wide mma.
#pragma once

#include "conv5x5_params.cuh"

namespace glam_fast {

template <int CIN, int COUT, bool POOL, class T>
struct Conv5x5TensorCoreTile {
  static_assert(CIN % 8 == 0, "a 16-byte segment (8 channels) must stay within one tap");
  static constexpr int kThreads = 128;
  static constexpr int kWarpsN = COUT >= 128 ? 2 : 1;
  static constexpr int kWarpsM = kThreads / 32 / kWarpsN;
  static constexpr int kWarpM = 32;
  static constexpr int kWarpN = COUT / kWarpsN;
  static constexpr int kBlockM = kWarpM * kWarpsM;
  static constexpr int kMmaM = kWarpM / 16;
  static constexpr int kMmaN = kWarpN / 8;
  static constexpr int kBK = kConv5x5TensorCoreKTile;
  static constexpr int kKPad = (25 * CIN + kBK - 1) / kBK * kBK;
  static constexpr int kKTiles = kKPad / kBK;
  static constexpr int kStages = 3;
  // Shared-memory row stride in elements: 16 bytes of padding make the rows 20 words apart, so
  // the 8 rows x 4 words of a fragment load fall in 32 different banks.
  static constexpr int kLd = kBK + 8;
  static constexpr int kStageElems = (kBlockM + COUT) * kLd;
  static constexpr int kSmemBytes = kStages * kStageElems * int(sizeof(uint16_t));
  static constexpr int kSegments = kBK / 8;  // 16-byte segments per row and K tile
  static constexpr int kALoads = kBlockM * kSegments / kThreads;
  static constexpr int kBLoads = COUT * kSegments / kThreads;
  static_assert(kBlockM * kSegments % kThreads == 0 && COUT * kSegments % kThreads == 0, "even loads");
  static_assert(kWarpN % 8 == 0, "warp tile must be a multiple of n8");
  static constexpr int kInvalid = -(1 << 20);  // an output row that makes every tap fall outside

  struct Thread {
    float acc[kMmaM][kMmaN][4];
    // For each A row this thread loads: b*height of its image, and the output pixel (oh, ow).
    int a_image_row[kALoads], a_oh[kALoads], a_ow[kALoads];
  };

  // The output pixel of GEMM row `row` of block `block` (oh = kInvalid past the end).
  static GF_HD void row_pixel(const Conv5x5Params& p, int block, int row, int& image_row, int& oh, int& ow) {
    image_row = 0;
    oh = ow = kInvalid;
    if (POOL) {
      const int warp_m = row / kWarpM, within = row % kWarpM;
      const int sub = within / 8, pooled = within % 8;  // row = warp_m*32 + sub*8 + pooled
      const long long index = (long long)block * (kBlockM / 4) + warp_m * 8 + pooled;
      if (index * 4 >= p.rows) return;
      const int per_image = p.out_h * p.out_w;
      const int b = int(index / per_image), rem = int(index % per_image);
      image_row = b * p.height;
      oh = 2 * (rem / p.out_w) + sub / 2;
      ow = 2 * (rem % p.out_w) + sub % 2;
    } else {
      const long long index = (long long)block * kBlockM + row;
      if (index >= p.rows) return;
      const int per_image = p.height * p.width;
      const int b = int(index / per_image), rem = int(index % per_image);
      image_row = b * p.height;
      oh = rem / p.width;
      ow = rem % p.width;
    }
  }

  static GF_HD void init(Thread& t, const Conv5x5Params& p, int block, int tid) {
#pragma unroll
    for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) t.acc[mt][nt][i] = 0.f;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      row_pixel(p, block, (tid + i * kThreads) / kSegments, t.a_image_row[i], t.a_oh[i], t.a_ow[i]);
    }
  }

  // Issue the copies of K tile `kt` into one pipeline stage (A rows, then B rows).
  static GF_HD void load_stage(const Thread& t, const Conv5x5Params& p, int kt, uint16_t* stage, int tid) {
    const uint16_t* x = static_cast<const uint16_t*>(p.x);
    const uint16_t* w = static_cast<const uint16_t*>(p.weight);
    const int segment = tid % kSegments;  // the same for all of this thread's rows
    const int k0 = kt * kBK + segment * 8;
    const int tap = k0 / CIN, c0 = k0 % CIN;
    const int kh = tap / 5 - 2, kw = tap % 5 - 2;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int row = (tid + i * kThreads) / kSegments;
      const int ih = t.a_oh[i] + kh, iw = t.a_ow[i] + kw;
      const bool valid = tap < 25 && ih >= 0 && ih < p.height && iw >= 0 && iw < p.width;
      const uint16_t* src = valid ? x + ((long long)(t.a_image_row[i] + ih) * p.width + iw) * CIN + c0 : x;
      copy16_or_zero(stage + row * kLd + segment * 8, src, valid);
    }
    uint16_t* b_stage = stage + kBlockM * kLd;
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      const int n = (tid + i * kThreads) / kSegments;
      copy16_or_zero(b_stage + n * kLd + segment * 8, w + (long long)n * kKPad + k0, true);
    }
  }

  static GF_HD uint32_t a_fragment(const uint16_t* stage, int warp_m, int mt, int ks, int lane, int r) {
    const int row = warp_m * kWarpM + mt * 16 + MmaLayout::a_row(lane, r);
    return load_u32(stage + row * kLd + ks * 16 + MmaLayout::a_col(lane, r));
  }

  static GF_HD uint32_t b_fragment(const uint16_t* stage, int warp_n, int nt, int ks, int lane, int r) {
    const int n = warp_n * kWarpN + nt * 8 + MmaLayout::b_n(lane);
    return load_u32(stage + kBlockM * kLd + n * kLd + ks * 16 + MmaLayout::b_k(lane, r));
  }

  static __device__ __forceinline__ void compute_stage(Thread& t, const uint16_t* stage, int warp, int lane) {
    const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t a[kMmaM][4], b[kMmaN][2];
#pragma unroll
      for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
        for (int r = 0; r < 4; ++r) a[mt][r] = a_fragment(stage, warp_m, mt, ks, lane, r);
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt)
#pragma unroll
        for (int r = 0; r < 2; ++r) b[nt][r] = b_fragment(stage, warp_n, nt, ks, lane, r);
#pragma unroll
      for (int mt = 0; mt < kMmaM; ++mt)
#pragma unroll
        for (int nt = 0; nt < kMmaN; ++nt) mma_m16n8k16<T>(t.acc[mt][nt], a[mt], b[nt]);
    }
  }

  // The host counterpart of compute_stage for one warp (`lanes` = its 32 threads).
  static void compute_stage_host(Thread* lanes, const uint16_t* stage, int warp) {
    const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t a[kMmaM][32][4], b[kMmaN][32][2];
      for (int lane = 0; lane < 32; ++lane) {
        for (int mt = 0; mt < kMmaM; ++mt)
          for (int r = 0; r < 4; ++r) a[mt][lane][r] = a_fragment(stage, warp_m, mt, ks, lane, r);
        for (int nt = 0; nt < kMmaN; ++nt)
          for (int r = 0; r < 2; ++r) b[nt][lane][r] = b_fragment(stage, warp_n, nt, ks, lane, r);
      }
      for (int mt = 0; mt < kMmaM; ++mt) {
        for (int nt = 0; nt < kMmaN; ++nt) {
          float* d[32];
          for (int lane = 0; lane < 32; ++lane) d[lane] = lanes[lane].acc[mt][nt];
          mma_m16n8k16_host<T>(d, a[mt], b[nt]);
        }
      }
    }
  }

  // Bias + ReLU (+ max over the 2x2 window), stored as pairs of channels.
  static GF_HD void epilogue(const Thread& t, const Conv5x5Params& p, int block, int warp, int lane) {
    const int warp_m = warp / kWarpsN, warp_n = warp % kWarpsN;
    T* out = static_cast<T*>(p.out);
    if (POOL) {
      // Accumulator element i of m16 tile mt is row mt*16 + c_row(lane, i) = sub*8 + lane/4:
      // the window's four values are (mt, i) = (0, j), (0, j + 2), (1, j), (1, j + 2).
      const long long pooled = (long long)block * (kBlockM / 4) + warp_m * 8 + MmaLayout::c_row(lane, 0);
      if (pooled * 4 >= p.rows) return;
#pragma unroll
      for (int nt = 0; nt < kMmaN; ++nt) {
        const int n = warp_n * kWarpN + nt * 8 + MmaLayout::c_col(lane, 0);
        float v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float m0 = fmaxf(t.acc[0][nt][j], t.acc[0][nt][j + 2]);
          const float m1 = fmaxf(t.acc[1][nt][j], t.acc[1][nt][j + 2]);
          v[j] = relu(fmaxf(m0, m1) + p.bias[n + j]);
        }
        store_u32(out + pooled * COUT + n, pack_pair<T>(v[0], v[1]));
      }
    } else {
#pragma unroll
      for (int mt = 0; mt < kMmaM; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const long long pixel =
              (long long)block * kBlockM + warp_m * kWarpM + mt * 16 + MmaLayout::c_row(lane, 2 * h);
          if (pixel >= p.rows) continue;
#pragma unroll
          for (int nt = 0; nt < kMmaN; ++nt) {
            const int n = warp_n * kWarpN + nt * 8 + MmaLayout::c_col(lane, 2 * h);
            const float v0 = relu(t.acc[mt][nt][2 * h] + p.bias[n]);
            const float v1 = relu(t.acc[mt][nt][2 * h + 1] + p.bias[n + 1]);
            store_u32(out + pixel * COUT + n, pack_pair<T>(v0, v1));
          }
        }
      }
    }
  }
};

template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads) conv5x5_bias_relu_tensor_core_kernel(const Conv5x5Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  typename Tile::Thread t;
  const int block = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  Tile::init(t, p, block, tid);
#pragma unroll
  for (int s = 0; s < Tile::kStages - 1; ++s) {
    if (s < Tile::kKTiles) Tile::load_stage(t, p, s, smem + s * Tile::kStageElems, tid);
    cp_async_commit();
  }
  for (int kt = 0; kt < Tile::kKTiles; ++kt) {
    cp_async_wait<Tile::kStages - 2>();  // K tile kt has landed (for this thread's copies) ...
    __syncthreads();                     // ... for everyone's; and stage kt-1 is no longer read
    const int next = kt + Tile::kStages - 1;
    if (next < Tile::kKTiles) Tile::load_stage(t, p, next, smem + (next % Tile::kStages) * Tile::kStageElems, tid);
    cp_async_commit();
    Tile::compute_stage(t, smem + (kt % Tile::kStages) * Tile::kStageElems, warp, lane);
  }
  Tile::epilogue(t, p, block, warp, lane);
}

}  // namespace glam_fast
