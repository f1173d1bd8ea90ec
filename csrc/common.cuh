// Shared by the .cu files: element types and their conversions (host and device), the
// cp.async / mma.sync wrappers with host stand-ins, and the launch plumbing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "ops.h"

#define GF_HD __host__ __device__ __forceinline__

namespace glam_fast {

// ---- element types --------------------------------------------------------------------------
// I/O element types: float, __half, __nv_bfloat16. Arithmetic is fp32 everywhere except inside
// the tensor-core mma, which multiplies 16-bit operands and accumulates in fp32.
template <class T> struct TypeName;
template <> struct TypeName<float> { static constexpr const char* value = "fp32"; };
template <> struct TypeName<__half> { static constexpr const char* value = "fp16"; };
template <> struct TypeName<__nv_bfloat16> { static constexpr const char* value = "bf16"; };

GF_HD float to_float(float v) { return v; }
GF_HD float to_float(__half v) { return __half2float(v); }
GF_HD float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> GF_HD T from_float(float v);
template <> GF_HD float from_float<float>(float v) { return v; }
template <> GF_HD __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> GF_HD __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 16-bit element <-> its bit pattern (shared memory holds bit patterns; mma reads them packed).
template <class T> GF_HD uint16_t to_bits(T v) {
  uint16_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}
template <class T> GF_HD float bits_to_float(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(bits));
  return to_float(v);
}

// Two values as one 32-bit word, the first in the low half (the order mma fragments use).
template <class T> GF_HD uint32_t pack_pair(float lo, float hi) {
  return uint32_t(to_bits(from_float<T>(lo))) | (uint32_t(to_bits(from_float<T>(hi))) << 16);
}

GF_HD uint32_t load_u32(const uint16_t* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

GF_HD void store_u32(void* p, uint32_t v) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<uint32_t*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

GF_HD float4 load_float4(const float* p) {
#ifdef __CUDA_ARCH__
  return __ldg(reinterpret_cast<const float4*>(p));
#else
  float4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
#endif
}

GF_HD void store_float4(float* p, float4 v) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<float4*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

GF_HD float relu(float v) { return v > 0.f ? v : 0.f; }

// ---- asynchronous copies (sm_80+) -----------------------------------------------------------
// 16 bytes global -> shared, or 16 zero bytes when !valid (src is then not read). The host
// stand-in copies synchronously: the emulation runs the copy and its use in program order.
GF_HD void copy16_or_zero(void* smem_dst, const void* gmem_src, bool valid) {
#ifdef __CUDA_ARCH__
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
#else
  if (valid) {
    std::memcpy(smem_dst, gmem_src, 16);
  } else {
    std::memset(smem_dst, 0, 16);
  }
#endif
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// ---- mma.sync.m16n8k16 (fp16 / bf16 in, fp32 accumulate) ------------------------------------
// Which elements each lane holds (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and t = lane % 4:
//   A (16x16, row-major), 32-bit register r = 0..3 holds (row, col) and (row, col + 1);
//   B (16x8, K x N),      register r = 0..1 holds (k, n) and (k + 1, n);
//   C/D (16x8 fp32),      element i = 0..3 is (row, col).
// The device code loads fragments and stores results through these functions, and the host
// emulation rebuilds whole matrices from them, so both sides share one statement of the layout.
struct MmaLayout {
  static GF_HD int a_row(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
  static GF_HD int a_col(int lane, int r) { return (lane & 3) * 2 + 8 * (r >> 1); }
  static GF_HD int b_k(int lane, int r) { return (lane & 3) * 2 + 8 * r; }
  static GF_HD int b_n(int lane) { return lane >> 2; }
  static GF_HD int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
  static GF_HD int c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }
};

template <class T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                            const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Host stand-in for one warp's mma: d[lane][i] += (A B)[row, col] with A, B rebuilt from the 32
// lanes' fragments. Products are exact in fp32 (16-bit inputs); sums are fp32.
template <class T>
inline void mma_m16n8k16_host(float* const d[32], const uint32_t a[32][4], const uint32_t b[32][2]) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const int row = MmaLayout::a_row(lane, r), col = MmaLayout::a_col(lane, r);
      A[row][col] = bits_to_float<T>(uint16_t(a[lane][r] & 0xffffu));
      A[row][col + 1] = bits_to_float<T>(uint16_t(a[lane][r] >> 16));
    }
    for (int r = 0; r < 2; ++r) {
      const int k = MmaLayout::b_k(lane, r), n = MmaLayout::b_n(lane);
      B[k][n] = bits_to_float<T>(uint16_t(b[lane][r] & 0xffffu));
      B[k + 1][n] = bits_to_float<T>(uint16_t(b[lane][r] >> 16));
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int row = MmaLayout::c_row(lane, i), col = MmaLayout::c_col(lane, i);
      float sum = 0.f;
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      d[lane][i] += sum;
    }
  }
}

// ---- launch plumbing ------------------------------------------------------------------------
// Makes `device` current for this (statically linked) runtime and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  static void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error(std::string("glam_fast: ") + what + " failed: " + cudaGetErrorString(err));
    }
  }

 private:
  int previous_ = 0;
};

// Raises if the launch just made failed (bad configuration, no kernel image for this GPU, ...).
inline void check_launch(const std::string& kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error("glam_fast: launching " + kernel + " failed: " + cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

}  // namespace glam_fast
