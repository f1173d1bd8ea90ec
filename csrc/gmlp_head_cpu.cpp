// GLAM's gMLP head on the CPU (see gmlp_head_cpu.h). Two passes over (segment, block of rows)
// work items, split over PyTorch's OpenMP threads: the token mixing of a row reads the
// normalised gate of every row of its segment, so all of pass 1 finishes before pass 2 starts.
//   pass 1: LayerNorm -> z; z [Wv^T | Wg^T] + b, GELU -> hidden; LayerNorm of the gate half
//   pass 2: 2 Wmix gate + 2 bmix, sigmoid, value * (2 s - 1) -> gated; gated Wo^T + bo + tokens, ReLU -> out
// The GEMMs are cpu_gemm.h's register tiles, each column panel of the right-hand side reused by
// all rows of a work item.
#include "gmlp_head_cpu.h"

#include <algorithm>
#include <cmath>

#include "cpu_gemm.h"
#include "cpu_parallel.h"
#include "cpu_vector.h"

namespace glam_fast {
namespace {

using cpu::gemm;
using cpu::IVec;
using cpu::kLanes;
using cpu::load;
using cpu::load_first;
using cpu::Operands;
using cpu::splat;
using cpu::store;
using cpu::store_first;
using cpu::Vec;
static_assert(kGMLPHeadColumnStep == kLanes, "padded columns are whole vectors");

GLAM_FAST_ALWAYS_INLINE Vec select_less(Vec a, Vec b, Vec if_less, Vec otherwise) { return a < b ? if_less : otherwise; }

// exp(x), float32 (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, degree-5 polynomial for
// (e^r - 1 - r) / r^2, 2^n put into the exponent bits); x clamped to [-87, 88].
GLAM_FAST_ALWAYS_INLINE Vec exp_vec(Vec x) {
  x = select_less(x, splat(-87.f), splat(-87.f), x);
  x = select_less(splat(88.f), x, splat(88.f), x);
  const Vec shift = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const Vec n = (x * 1.44269504088896341f + shift) - shift;
  const Vec r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec e_r = p * (r * r) + r + 1.f;
  const IVec two_n = (__builtin_convertvector(n, IVec) + 127) << 23;
  return e_r * (Vec)two_n;  // a vector cast keeps the bits
}

// erf(x) as Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7; PyTorch's vectorised CPU
// erf uses the same formula).
GLAM_FAST_ALWAYS_INLINE Vec erf_vec(Vec x) {
  const IVec bits = (IVec)x;
  const IVec sign = bits & static_cast<int32_t>(0x80000000u);
  const IVec abs_bits = bits & 0x7fffffff;
  const Vec a = (Vec)abs_bits;
  const Vec t = 1.f / (a * 0.3275911f + 1.f);
  Vec p = splat(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const Vec y = 1.f - p * t * exp_vec(-(a * a));
  return (Vec)((IVec)y | sign);
}

GLAM_FAST_ALWAYS_INLINE Vec gelu_vec(Vec x) { return 0.5f * x * (1.f + erf_vec(x * 0.70710678118654752f)); }
GLAM_FAST_ALWAYS_INLINE Vec sigmoid_vec(Vec x) { return 1.f / (1.f + exp_vec(-x)); }

GLAM_FAST_ALWAYS_INLINE float sum_lanes(Vec v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// y = LayerNorm(x) * weight + bias over n features (biased variance, as torch.nn.LayerNorm); y may be x.
GLAM_FAST_ALWAYS_INLINE void layer_norm_row(const float* x, int64_t n, const float* weight, const float* bias, float eps, float* y) {
  const int64_t full = n / kLanes * kLanes;
  Vec acc = {};
  for (int64_t c = 0; c < full; c += kLanes) acc += load(x + c);
  float sum = sum_lanes(acc);
  for (int64_t c = full; c < n; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(n);
  acc = Vec{};
  for (int64_t c = 0; c < full; c += kLanes) {
    const Vec d = load(x + c) - mean;
    acc += d * d;
  }
  float squares = sum_lanes(acc);
  for (int64_t c = full; c < n; ++c) squares += (x[c] - mean) * (x[c] - mean);
  const float inv_std = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
  for (int64_t c = 0; c < full; c += kLanes) store(y + c, (load(x + c) - mean) * inv_std * load(weight + c) + load(bias + c));
  for (int64_t c = full; c < n; ++c) y[c] = (x[c] - mean) * inv_std * weight[c] + bias[c];
}

struct Shape {
  int64_t S, D, H, Dp, Hp, blocks;  // blocks of kGMLPHeadRowBlock rows per segment
  explicit Shape(const GMLPHeadArgs& a)
      : S(a.tokens_per_segment), D(a.features), H(a.hidden_features), Dp(gmlp_head_padded(a.features)),
        Hp(gmlp_head_padded(a.hidden_features)), blocks((a.tokens_per_segment + kGMLPHeadRowBlock - 1) / kGMLPHeadRowBlock) {}
  struct Item {
    int64_t segment, first_row, last_row;
  };
  Item item(int64_t i) const {  // work item i: a block of rows of one segment
    const int64_t first = i % blocks * kGMLPHeadRowBlock;
    return {i / blocks, first, std::min(S, first + kGMLPHeadRowBlock)};
  }
};

struct ProjectInEpilogue {  // hidden = gelu(acc + in_bias)
  const float* bias;
  float* hidden;
  int64_t ld;
  GLAM_FAST_ALWAYS_INLINE void operator()(int64_t row, int64_t column, Vec acc) const {
    store(hidden + row * ld + column, gelu_vec(acc + load(bias + column)));
  }
};

struct MixEpilogue {  // gated = value * (2 sigmoid(acc + mix_bias) - 1)
  const float* mix_bias;
  const float* value;  // rows of ld floats
  float* gated;        // rows of Hp floats
  int64_t ld, Hp;
  GLAM_FAST_ALWAYS_INLINE void operator()(int64_t row, int64_t column, Vec acc) const {
    const Vec half_tanh = sigmoid_vec(acc + mix_bias[row]);
    const Vec v = load(value + row * ld + column);
    store(gated + row * Hp + column, v * (2.f * half_tanh - 1.f));
  }
};

struct ProjectOutEpilogue {  // out = relu(acc + out_bias + tokens), the first D columns
  const float* bias;
  const float* tokens;
  float* out;
  int64_t D;
  GLAM_FAST_ALWAYS_INLINE void operator()(int64_t row, int64_t column, Vec acc) const {
    const int64_t n = D - column;
    const float* t = tokens + row * D + column;
    float* y = out + row * D + column;
    if (n >= kLanes) {
      const Vec x = acc + load(bias + column) + load(t);
      store(y, cpu::relu(x));
    } else if (n > 0) {
      const Vec x = acc + load_first(bias + column, n) + load_first(t, n);
      store_first(y, cpu::relu(x), n);
    }
  }
};

GLAM_FAST_CPU_CLONES
void project_in_items(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const GMLPHeadArgs*>(context);
  const Shape s(a);
  for (int64_t item = first; item < last; ++item) {
    const auto [segment, row0, row1] = s.item(item);
    const float* tokens = a.tokens + segment * s.S * s.D;
    float* z = a.z + segment * s.S * s.D;
    float* hidden = a.hidden + segment * s.S * 2 * s.Hp;
    for (int64_t row = row0; row < row1; ++row) layer_norm_row(tokens + row * s.D, s.D, a.norm_weight, a.norm_bias, a.norm_eps, z + row * s.D);
    gemm(Operands{z, s.D, a.in_weight, 2 * s.Hp, s.D}, row0, row1, 2 * s.Hp, ProjectInEpilogue{a.in_bias, hidden, 2 * s.Hp});
    for (int64_t row = row0; row < row1; ++row) {
      float* gate = hidden + row * 2 * s.Hp + s.Hp;
      layer_norm_row(gate, s.H, a.gate_norm_weight, a.gate_norm_bias, a.gate_norm_eps, gate);
    }
  }
}

GLAM_FAST_CPU_CLONES
void mix_and_project_out_items(const void* context, int64_t first, int64_t last) {
  const auto& a = *static_cast<const GMLPHeadArgs*>(context);
  const Shape s(a);
  for (int64_t item = first; item < last; ++item) {
    const auto [segment, row0, row1] = s.item(item);
    const float* hidden = a.hidden + segment * s.S * 2 * s.Hp;
    float* gated = a.gated + segment * s.S * s.Hp;
    // The gate's padding columns (GELU(0) = 0) mix to padding columns of gated, which the output
    // projection's K loop (H, not Hp) never reads.
    gemm(Operands{a.mix_weight, s.S, hidden + s.Hp, 2 * s.Hp, s.S}, row0, row1, s.Hp, MixEpilogue{a.mix_bias, hidden, gated, 2 * s.Hp, s.Hp});
    gemm(Operands{gated, s.Hp, a.out_weight, s.Dp, s.H}, row0, row1, s.Dp,
         ProjectOutEpilogue{a.out_bias, a.tokens + segment * s.S * s.D, a.out + segment * s.S * s.D, s.D});
  }
}

}  // namespace

void gmlp_head(const GMLPHeadArgs& args) {
  const int64_t items = args.batch * Shape(args).blocks;
  cpu::parallel_ranges(items, args.threads, project_in_items, &args);
  cpu::parallel_ranges(items, args.threads, mix_and_project_out_items, &args);
}

}  // namespace glam_fast
