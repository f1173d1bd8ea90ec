// GLAM's global-aware fusion head (one gMLP block) for CPU inference, in one native call: the
// three GEMMs with their bias, GELU, LayerNorm, token-mixing gate and residual applied to each
// tile while it is in registers, instead of a dozen PyTorch ops that each stream the activations
// through memory. Plain C++ (no torch headers); glam_fast/gmlp_head_cpu.py packs the weights,
// runs it and holds the PyTorch reference it is tested against.
//
// Per segment, S tokens of D features (GLAM: S = 128 channels, D = H' * W' of conv5's map):
//   z      = LayerNorm_D(tokens)                                   (S, D)
//   value  = gelu(z Wv^T + bv),  gate = LayerNorm_H(gelu(z Wg^T + bg))   (S, H) each
//   gated  = value * tanh(Wmix gate + bmix),  tanh(u) = 2 sigmoid(2u) - 1   (S, H)
//   out    = relu(gated Wo^T + bo + tokens)                        (S, D)
#pragma once

#include <cstdint>

namespace glam_fast {

// The packed weights' column counts are padded to a multiple of this (zero weights and biases).
constexpr int64_t kGMLPHeadColumnStep = 16;
inline int64_t gmlp_head_padded(int64_t columns) { return (columns + kGMLPHeadColumnStep - 1) / kGMLPHeadColumnStep * kGMLPHeadColumnStep; }
// Tokens per work item: the items (segment, block of rows) are what the threads share.
constexpr int64_t kGMLPHeadRowBlock = 32;

// Hp = gmlp_head_padded(H), Dp = gmlp_head_padded(D). Every array is float32, contiguous.
struct GMLPHeadArgs {
  const float* tokens;                                  // (B, S, D)
  const float* norm_weight;                             // (D,)
  const float* norm_bias;                               // (D,)
  const float* in_weight;                               // (D, 2 Hp): [Wv^T | 0 | Wg^T | 0]
  const float* in_bias;                                 // (2 Hp,):   [bv | 0 | bg | 0]
  const float* gate_norm_weight;                        // (H,)
  const float* gate_norm_bias;                          // (H,)
  const float* mix_weight;                              // (S, S): 2 Wmix
  const float* mix_bias;                                // (S,): 2 bmix
  const float* out_weight;                              // (H, Dp): [Wo^T | 0]
  const float* out_bias;                                // (D,)
  float* z;                                             // scratch (B, S, D)
  float* hidden;                                        // scratch (B, S, 2 Hp): value | gate
  float* gated;                                         // scratch (B, S, Hp)
  float* out;                                           // (B, S, D)
  int64_t batch, tokens_per_segment, features, hidden_features;  // B, S, D, H
  float norm_eps, gate_norm_eps;
  int threads;  // PyTorch OpenMP threads to share the work (cpu_parallel.h)
};
void gmlp_head(const GMLPHeadArgs& args);

}  // namespace glam_fast
