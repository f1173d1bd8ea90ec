// 5x5 'same' convolution CIN -> COUT + bias + ReLU (+ 2x2 max-pool), NHWC, fp32 on the CUDA cores
// (exact fp32 FMAs, no TF32), as an implicit GEMM with register tiles:
//   a block of 256 threads computes kBlockM output rows x COUT channels; each thread 4 rows x 8
//   channels (channels ng*4..+3 and COUT/2 + ng*4..+3, so the warp's shared-memory reads are
//   consecutive float4s). With pooling the 4 rows of a thread are the 4 sub-positions of one
//   pooled pixel, and the max-pool is a register reduction in the epilogue.
// K = 25 taps x CIN runs in tiles of 16 (within one tap since CIN >= 16), double-buffered in
// shared memory through registers: the next tile is fetched from global memory while the
// current one is multiplied. A is stored transposed (k-major) so the 4 rows are one float4.
//
// The per-thread steps (init, fetch, stash, compute, epilogue) are __host__ __device__; the
// host emulation in conv5x5_bias_relu.cu runs them in program order over all blocks/threads.
#pragma once

#include "conv5x5_params.cuh"

namespace glam_fast {

template <int CIN, int COUT, bool POOL>
struct Conv5x5Fp32Tile {
  static_assert(CIN % 16 == 0, "a K tile of 16 must stay within one tap");
  static constexpr int kThreads = 256;
  static constexpr int kTM = 4, kTN = 8;
  static constexpr int kNGroups = COUT / kTN;
  static constexpr int kMGroups = kThreads / kNGroups;
  static constexpr int kBlockM = kMGroups * kTM;
  static constexpr int kBK = 16;
  static constexpr int kKTiles = 25 * CIN / kBK;
  static constexpr int kLdA = kBlockM + 4;  // keeps rows 16-byte aligned for the float4 reads
  static constexpr int kStageFloats = kBK * kLdA + kBK * COUT;
  static constexpr int kSmemBytes = 2 * kStageFloats * int(sizeof(float));
  static constexpr int kAVectors = kBlockM * kBK / 4;
  static constexpr int kBVectors = kBK * COUT / 4;
  static constexpr int kALoads = (kAVectors + kThreads - 1) / kThreads;
  static constexpr int kBLoads = (kBVectors + kThreads - 1) / kThreads;
  static_assert(kAVectors % kThreads == 0, "every thread loads the same number of A vectors");
  static constexpr int kInvalid = -(1 << 20);

  struct Thread {
    float acc[kTM][kTN];
    float4 a_fetched[kALoads], b_fetched[kBLoads];
    int a_image_row[kALoads], a_oh[kALoads], a_ow[kALoads];
  };

  static GF_HD void row_pixel(const Conv5x5Params& p, int block, int row, int& image_row, int& oh, int& ow) {
    image_row = 0;
    oh = ow = kInvalid;
    long long index;
    int sub = 0;
    if (POOL) {
      index = (long long)block * (kBlockM / 4) + row / 4;  // row = pooled * 4 + sub
      sub = row % 4;
      if (index * 4 >= p.rows) return;
      const int per_image = p.out_h * p.out_w;
      const int rem = int(index % per_image);
      image_row = int(index / per_image) * p.height;
      oh = 2 * (rem / p.out_w) + sub / 2;
      ow = 2 * (rem % p.out_w) + sub % 2;
    } else {
      index = (long long)block * kBlockM + row;
      if (index >= p.rows) return;
      const int per_image = p.height * p.width;
      const int rem = int(index % per_image);
      image_row = int(index / per_image) * p.height;
      oh = rem / p.width;
      ow = rem % p.width;
    }
  }

  static GF_HD void init(Thread& t, const Conv5x5Params& p, int block, int tid) {
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) t.acc[i][j] = 0.f;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      row_pixel(p, block, (tid + i * kThreads) / 4, t.a_image_row[i], t.a_oh[i], t.a_ow[i]);
    }
  }

  // Global -> registers: this thread's A and B vectors of K tile kt.
  static GF_HD void fetch(Thread& t, const Conv5x5Params& p, int kt, int tid) {
    const float* x = static_cast<const float*>(p.x);
    const float* w = static_cast<const float*>(p.weight);
    const int quarter = tid % 4;  // which 4 of the tile's 16 channels (the same for all rows)
    const int k0 = kt * kBK + quarter * 4;
    const int tap = k0 / CIN, c0 = k0 % CIN;
    const int kh = tap / 5 - 2, kw = tap % 5 - 2;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int ih = t.a_oh[i] + kh, iw = t.a_ow[i] + kw;
      const bool valid = ih >= 0 && ih < p.height && iw >= 0 && iw < p.width;
      t.a_fetched[i] = valid ? load_float4(x + ((long long)(t.a_image_row[i] + ih) * p.width + iw) * CIN + c0)
                             : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      const int v = tid + i * kThreads;
      if (v < kBVectors) {
        const int k = v / (COUT / 4), n4 = v % (COUT / 4);
        t.b_fetched[i] = load_float4(w + (long long)(kt * kBK + k) * COUT + n4 * 4);
      }
    }
  }

  // Registers -> shared memory (A transposed to k-major).
  static GF_HD void stash(const Thread& t, float* stage, int tid) {
    float* As = stage;
    float* Bs = stage + kBK * kLdA;
    const int quarter = tid % 4;
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      const int row = (tid + i * kThreads) / 4;
      As[(quarter * 4 + 0) * kLdA + row] = t.a_fetched[i].x;
      As[(quarter * 4 + 1) * kLdA + row] = t.a_fetched[i].y;
      As[(quarter * 4 + 2) * kLdA + row] = t.a_fetched[i].z;
      As[(quarter * 4 + 3) * kLdA + row] = t.a_fetched[i].w;
    }
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      const int v = tid + i * kThreads;
      if (v < kBVectors) store_float4(Bs + v * 4, t.b_fetched[i]);  // (k, n4) -> k*COUT + n4*4
    }
  }

  static GF_HD float4 shared_float4(const float* p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const float4*>(p);
#else
    float4 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
#endif
  }

  static GF_HD void compute(Thread& t, const float* stage, int tid) {
    const float* As = stage;
    const float* Bs = stage + kBK * kLdA;
    const int mg = tid / kNGroups, ng = tid % kNGroups;
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      const float4 a = shared_float4(As + k * kLdA + mg * kTM);
      const float4 b0 = shared_float4(Bs + k * COUT + ng * 4);
      const float4 b1 = shared_float4(Bs + k * COUT + COUT / 2 + ng * 4);
      const float av[4] = {a.x, a.y, a.z, a.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) t.acc[i][j] = fmaf(av[i], bv[j], t.acc[i][j]);
    }
  }

  static GF_HD void store_row(float* dst, const float* v, const float* bias, int ng) {
    // channels ng*4..+3 and COUT/2 + ng*4..+3
    const float* b0 = bias + ng * 4;
    const float* b1 = bias + COUT / 2 + ng * 4;
    store_float4(dst + ng * 4, make_float4(relu(v[0] + b0[0]), relu(v[1] + b0[1]), relu(v[2] + b0[2]), relu(v[3] + b0[3])));
    store_float4(dst + COUT / 2 + ng * 4,
                 make_float4(relu(v[4] + b1[0]), relu(v[5] + b1[1]), relu(v[6] + b1[2]), relu(v[7] + b1[3])));
  }

  static GF_HD void epilogue(const Thread& t, const Conv5x5Params& p, int block, int tid) {
    float* out = static_cast<float*>(p.out);
    const int mg = tid / kNGroups, ng = tid % kNGroups;
    if (POOL) {
      const long long pooled = (long long)block * (kBlockM / 4) + mg;
      if (pooled * 4 >= p.rows) return;
      float v[kTN];
#pragma unroll
      for (int j = 0; j < kTN; ++j) v[j] = fmaxf(fmaxf(t.acc[0][j], t.acc[1][j]), fmaxf(t.acc[2][j], t.acc[3][j]));
      store_row(out + pooled * COUT, v, p.bias, ng);
    } else {
#pragma unroll
      for (int i = 0; i < kTM; ++i) {
        const long long pixel = (long long)block * kBlockM + mg * kTM + i;
        if (pixel < p.rows) store_row(out + pixel * COUT, t.acc[i], p.bias, ng);
      }
    }
  }
};

template <class Tile>
__global__ void __launch_bounds__(Tile::kThreads) conv5x5_bias_relu_fp32_kernel(const Conv5x5Params p) {
  extern __shared__ __align__(16) float smem_f32[];
  typename Tile::Thread t;
  const int block = blockIdx.x, tid = threadIdx.x;
  Tile::init(t, p, block, tid);
  Tile::fetch(t, p, 0, tid);
  Tile::stash(t, smem_f32, tid);
  __syncthreads();
  for (int kt = 0; kt < Tile::kKTiles; ++kt) {
    const bool more = kt + 1 < Tile::kKTiles;
    if (more) Tile::fetch(t, p, kt + 1, tid);  // in flight while tile kt is multiplied
    Tile::compute(t, smem_f32 + (kt % 2) * Tile::kStageFloats, tid);
    if (more) Tile::stash(t, smem_f32 + ((kt + 1) % 2) * Tile::kStageFloats, tid);
    __syncthreads();
  }
  Tile::epilogue(t, p, block, tid);
}

}  // namespace glam_fast
