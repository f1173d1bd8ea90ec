// pybind11 entry point of glam_fast._C. Tensors arrive as descriptors (data pointer, shape,
// strides, dtype name, device type, device index), so nothing here needs torch's headers. Every
// op binding checks its arguments (device, dtype, contiguity, shapes, alignment) before any
// launch, with errors that name the argument and what to do; kernels run on the stream passed in.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "build_config.h"
#include "ops.h"
#include "cpu_parallel.h"
#include "glam_stem_cpu.h"
#include "gmlp_head_cpu.h"
#include "pool_concat_cpu.h"
#include "runtime_info.h"
#include "winograd_cpu.h"

namespace py = pybind11;

namespace {

using glam_fast::DType;

// ---- tensor descriptors and argument checks -------------------------------------------------

struct TensorRef {
  std::string name;
  std::uintptr_t ptr = 0;
  std::vector<int64_t> shape, strides;
  std::string dtype, device_type;
  int device_index = -1;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
};

std::string join(const std::vector<int64_t>& v) {
  // std::to_string, not an ostringstream: iostreams touch the C++ locale, which crashed where the
  // module's libstdc++ and the one already loaded in the process (torch's) disagree.
  std::string out = "(";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + (v.size() == 1 ? ",)" : ")");
}

// Where kernels may run: the CUDA launchers want CUDA tensors on one device, the host emulation
// CPU tensors.
enum class Where { kCuda, kHost };

class Checker {
 public:
  Checker(std::string op, Where where) : op_(std::move(op)), where_(where) {}

  [[noreturn]] void value_error(const std::string& message) const { throw py::value_error(op_ + ": " + message); }
  [[noreturn]] void type_error(const std::string& message) const { throw py::type_error(op_ + ": " + message); }

  TensorRef tensor(const py::handle& obj, const char* name) const {
    TensorRef t;
    t.name = name;
    try {
      const auto d = obj.cast<py::tuple>();
      if (d.size() != 6) throw py::cast_error("need 6 fields");
      t.ptr = d[0].cast<std::uintptr_t>();
      t.shape = d[1].cast<std::vector<int64_t>>();
      t.strides = d[2].cast<std::vector<int64_t>>();
      t.dtype = d[3].cast<std::string>();
      t.device_type = d[4].cast<std::string>();
      t.device_index = d[5].cast<int>();
    } catch (const py::cast_error&) {
      type_error(std::string(name) +
                 " must be a tensor descriptor (data_ptr, shape, strides, dtype, device type, device index); "
                 "glam_fast.ops.cuda_kernels builds these from torch tensors");
    }
    check_device(t);
    if (t.numel() >= (int64_t(1) << 31)) {
      value_error(std::string(name) + " has " + std::to_string(t.numel()) +
                  " elements; at most 2^31 - 1 are supported: split the batch");
    }
    return t;
  }

  void shape(const TensorRef& t, const std::vector<int64_t>& expected, const char* layout) const {
    bool ok = t.shape.size() == expected.size();
    for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || t.shape[i] == expected[i];
    if (!ok) value_error(t.name + " must have shape " + layout + " = " + join(expected) + " (-1: any), got " + join(t.shape));
  }

  void contiguous(const TensorRef& t, const char* layout) const {
    int64_t expected = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      if (t.shape[i] != 1 && t.strides[i] != expected) {
        value_error(t.name + " must be contiguous " + layout + ", got shape " + join(t.shape) + " with strides " +
                    join(t.strides) + "; call .contiguous() on it");
      }
      expected *= t.shape[i];
    }
  }

  // The thread count a CPU kernel is given (cpu_parallel.h).
  void threads(int threads) const {
    if (threads < 1) value_error("threads must be at least 1, got " + std::to_string(threads));
  }

  void aligned(const TensorRef& t, int bytes) const {
    if (t.ptr % bytes != 0) {
      value_error(t.name + " must start on a " + std::to_string(bytes) +
                  "-byte boundary (vector loads); it is a view at an odd offset: pass .clone() of it");
    }
  }

  DType io_dtype(const TensorRef& t) const {
    if (t.dtype == "float32") return DType::kFloat32;
    if (t.dtype == "float16") return DType::kFloat16;
    if (t.dtype == "bfloat16") return DType::kBFloat16;
    type_error(t.name + " must be float32, float16 or bfloat16, got " + t.dtype);
  }

  void dtype(const TensorRef& t, const std::string& expected) const {
    if (t.dtype != expected) type_error(t.name + " must be " + expected + ", got " + t.dtype);
  }

  // All tensors of one call on one device.
  void same_device(const std::vector<const TensorRef*>& tensors) const {
    for (const TensorRef* t : tensors) {
      if (t->device_index != tensors.front()->device_index) {
        value_error("all tensors must be on one device: " + tensors.front()->name + " is on " +
                    tensors.front()->device_type + ":" + std::to_string(tensors.front()->device_index) + ", " +
                    t->name + " on " + t->device_type + ":" + std::to_string(t->device_index));
      }
    }
  }

 private:
  void check_device(const TensorRef& t) const {
    if (where_ == Where::kCuda && t.device_type != "cuda") {
      value_error(t.name + " must be a CUDA tensor, got a " + t.device_type +
                  " tensor; move it with .cuda() (the *_emulated entry points take CPU tensors)");
    }
    if (where_ == Where::kHost && t.device_type != "cpu") {
      value_error(t.name + " must be a CPU tensor for the host emulation, got a " + t.device_type + " tensor");
    }
  }

  std::string op_;
  Where where_;
};

// ---- conv5x5_bias_relu ----------------------------------------------------------------------

glam_fast::Conv5x5Args conv5x5_args(Where where, const py::handle& x_obj, const py::handle& weight_obj,
                                    const py::handle& bias_obj, const py::handle& out_obj, bool pool) {
  const Checker check("conv5x5_bias_relu", where);
  const TensorRef x = check.tensor(x_obj, "x"), weight = check.tensor(weight_obj, "weight");
  const TensorRef bias = check.tensor(bias_obj, "bias"), out = check.tensor(out_obj, "out");
  check.same_device({&x, &weight, &bias, &out});
  const DType dtype = check.io_dtype(x);
  check.shape(x, {-1, -1, -1, -1}, "(B, H, W, Cin)");
  check.contiguous(x, "(B, H, W, Cin) channels-last");
  const int64_t batch = x.shape[0], height = x.shape[1], width = x.shape[2], cin = x.shape[3];
  check.dtype(bias, "float32");
  check.shape(bias, {-1}, "(Cout,)");
  check.contiguous(bias, "(Cout,)");
  const int64_t cout = bias.shape[0];
  if (!glam_fast::conv5x5_supported(int(cin), int(cout))) {
    check.value_error("no kernel for Cin=" + std::to_string(cin) + " -> Cout=" + std::to_string(cout) +
                      "; compiled (Cin, Cout) pairs: " + glam_fast::conv5x5_supported_text());
  }
  if (cin == 128 && pool) check.value_error("the Cin=128 kernel (GLAM's conv5) has no pooling epilogue");
  if (dtype == DType::kFloat32) {
    check.dtype(weight, "float32");
    check.shape(weight, {25 * cin, cout}, "(25*Cin, Cout)");
  } else {
    check.dtype(weight, x.dtype);
    check.shape(weight, {cout, glam_fast::conv5x5_padded_k(int(cin))}, "(Cout, Kpad)");
  }
  check.contiguous(weight, "packed weight");
  if (pool && (height < 2 || width < 2)) {
    check.value_error("2x2 pooling needs H >= 2 and W >= 2, got x of shape " + join(x.shape));
  }
  const int64_t out_h = pool ? height / 2 : height, out_w = pool ? width / 2 : width;
  check.dtype(out, x.dtype);
  check.shape(out, {batch, out_h, out_w, cout}, "(B, H_out, W_out, Cout)");
  check.contiguous(out, "(B, H_out, W_out, Cout)");
  for (const TensorRef* t : {&x, &weight, &out}) check.aligned(*t, 16);
  check.aligned(bias, 4);

  glam_fast::Conv5x5Args args{};
  args.x = reinterpret_cast<const void*>(x.ptr);
  args.weight = reinterpret_cast<const void*>(weight.ptr);
  args.bias = reinterpret_cast<const float*>(bias.ptr);
  args.out = reinterpret_cast<void*>(out.ptr);
  args.batch = int(batch);
  args.height = int(height);
  args.width = int(width);
  args.cin = int(cin);
  args.cout = int(cout);
  args.pool = pool;
  args.dtype = dtype;
  return args;
}

// ---- stem -----------------------------------------------------------------------------------

glam_fast::StemArgs stem_args(Where where, const py::handle& x_obj, const py::handle& params_obj,
                              const py::handle& out_obj) {
  const Checker check("glam_stem", where);
  const TensorRef x = check.tensor(x_obj, "x"), params = check.tensor(params_obj, "params");
  const TensorRef out = check.tensor(out_obj, "out");
  check.same_device({&x, &params, &out});
  const DType dtype = check.io_dtype(x);
  check.shape(x, {-1, 1, -1, -1}, "(B, 1, H, W)");
  check.contiguous(x, "(B, 1, H, W)");
  check.dtype(params, "float32");
  check.shape(params, {glam_fast::kStemParamCount}, "(packed stem parameters,)");
  check.contiguous(params, "(packed stem parameters,)");
  const int64_t batch = x.shape[0], height = x.shape[2], width = x.shape[3];
  check.dtype(out, x.dtype);
  check.shape(out, {batch, 2 * height, width, glam_fast::kStemChannels}, "(B, 2H, W, 16)");
  check.contiguous(out, "(B, 2H, W, 16)");
  check.aligned(out, 16);
  return glam_fast::StemArgs{reinterpret_cast<const void*>(x.ptr), reinterpret_cast<const float*>(params.ptr),
                             reinterpret_cast<void*>(out.ptr), int(batch), int(height), int(width), dtype};
}

// ---- squeeze_excite -------------------------------------------------------------------------

glam_fast::SqueezeExciteArgs squeeze_excite_args(Where where, const py::handle& mfcc_obj, const py::handle& params_obj,
                                                 const py::handle& partial_obj, const py::handle& out_obj) {
  const Checker check("squeeze_excite", where);
  const TensorRef mfcc = check.tensor(mfcc_obj, "mfcc"), params = check.tensor(params_obj, "params");
  const TensorRef partial = check.tensor(partial_obj, "partial_sums"), out = check.tensor(out_obj, "out");
  check.same_device({&mfcc, &params, &partial, &out});
  const DType dtype = check.io_dtype(mfcc);
  check.shape(mfcc, {-1, -1, -1}, "(B, T, M)");
  check.contiguous(mfcc, "(B, T, M)");
  const int64_t batch = mfcc.shape[0], time = mfcc.shape[1], n_mfcc = mfcc.shape[2];
  check.shape(out, {2, batch, -1, time}, "(2, B, F, T)");
  const int64_t filters = out.shape[2];
  if (n_mfcc < 1 || n_mfcc > glam_fast::kSqueezeExciteMaxMfcc || filters < 1 ||
      filters > glam_fast::kSqueezeExciteMaxFilters) {
    check.value_error("supports 1..64 MFCC coefficients and 1..64 filters, got M=" + std::to_string(n_mfcc) +
                      ", F=" + std::to_string(filters));
  }
  check.dtype(out, mfcc.dtype);
  check.contiguous(out, "(2, B, F, T)");
  const glam_fast::SqueezeExciteLayout layout{int(filters), int(n_mfcc)};
  check.dtype(params, "float32");
  check.shape(params, {2, layout.total}, "(2, packed parameters per direction)");
  check.contiguous(params, "(2, packed parameters per direction)");
  check.dtype(partial, "float32");
  check.shape(partial, {2, batch, glam_fast::squeeze_excite_time_tiles(int(time)), filters}, "(2, B, tiles, F)");
  check.contiguous(partial, "(2, B, tiles, F)");
  return glam_fast::SqueezeExciteArgs{reinterpret_cast<const void*>(mfcc.ptr), reinterpret_cast<const float*>(params.ptr),
                                      reinterpret_cast<float*>(partial.ptr), reinterpret_cast<void*>(out.ptr),
                                      int(batch), int(time), int(n_mfcc), int(filters), dtype};
}

int device_of(const py::handle& descriptor) { return descriptor.cast<py::tuple>()[5].cast<int>(); }

// ---- build facts ----------------------------------------------------------------------------

py::dict build_info() {
  py::dict info;
  info["version"] = GLAM_FAST_VERSION;
  info["cxx_compiler"] = GLAM_FAST_CXX_COMPILER;
  info["build_type"] = GLAM_FAST_BUILD_TYPE;
#ifdef GLAM_FAST_WITH_CUDA
  info["cuda"] = true;
  info["nvcc_version"] = GLAM_FAST_NVCC_VERSION;
  info["cuda_archs"] = GLAM_FAST_CUDA_ARCHS_STR;
  info["cuda_runtime_version"] = glam_fast::cuda_runtime_version();
  std::vector<std::string> kernels;
  glam_fast::conv5x5_list_kernels(kernels);
  glam_fast::stem_list_kernels(kernels);
  glam_fast::squeeze_excite_list_kernels(kernels);
  info["kernels"] = kernels;
#else
  info["cuda"] = false;
  info["nvcc_version"] = py::none();
  info["cuda_archs"] = py::none();
  info["cuda_runtime_version"] = py::none();
  info["kernels"] = std::vector<std::string>{};
#endif
  return info;
}

// ---- Winograd F(4x4, 3x3) / F(4x4, 5x5) transforms (CPU) ------------------------------------

// What both transforms check and derive: the thread count, the kernel size, and the float32
// (B, H, W, C) NHWC map (x for the input transform, y for the output one) whose C the
// transforms' vector step divides.
struct WinogradGeometry {
  int64_t positions, batch, height, width, channels, tiles;
};

WinogradGeometry winograd_geometry(const Checker& check, const TensorRef& map, int64_t kernel_size, int threads) {
  check.threads(threads);
  if (!glam_fast::winograd_kernel_supported(kernel_size)) {
    check.value_error("kernel_size must be 3 or 5, got " + std::to_string(kernel_size));
  }
  check.dtype(map, "float32");
  check.shape(map, {-1, -1, -1, -1}, "(B, H, W, C)");
  check.contiguous(map, "(B, H, W, C) channels-last");
  const int64_t batch = map.shape[0], height = map.shape[1], width = map.shape[2], channels = map.shape[3];
  if (channels % glam_fast::kWinogradChannelStep != 0) {
    check.value_error(map.name + " has " + std::to_string(channels) + " channels; the transforms need a multiple of " +
                      std::to_string(glam_fast::kWinogradChannelStep) + " (use the direct convolution)");
  }
  return {glam_fast::winograd_positions(kernel_size), batch, height, width, channels, glam_fast::winograd_tiles(batch, height, width)};
}

void winograd_input_transform(py::handle x_obj, py::handle v_obj, int64_t kernel_size, int threads) {
  const Checker check("winograd_input_transform", Where::kHost);
  const TensorRef x = check.tensor(x_obj, "x"), v = check.tensor(v_obj, "v");
  const WinogradGeometry g = winograd_geometry(check, x, kernel_size, threads);
  check.dtype(v, "float32");
  check.shape(v, {g.positions, g.tiles, g.channels}, "(P, tiles, C)");
  check.contiguous(v, "(P, tiles, C)");
  const glam_fast::WinogradInputArgs args{reinterpret_cast<const float*>(x.ptr), reinterpret_cast<float*>(v.ptr), g.batch, g.height,
                                          g.width, g.channels, g.tiles * g.channels, kernel_size, threads};
  py::gil_scoped_release release;
  glam_fast::winograd_input_transform(args);
}

// m: one (P, tiles, C) tensor (the native GEMM's output), or a list of P (tiles, C) tensors (one
// per oneDNN call).
void winograd_output_transform(py::handle m_arg, py::handle bias_obj, py::handle y_obj, int64_t kernel_size, int threads) {
  const Checker check("winograd_output_transform", Where::kHost);
  const TensorRef bias = check.tensor(bias_obj, "bias"), y = check.tensor(y_obj, "y");
  const WinogradGeometry g = winograd_geometry(check, y, kernel_size, threads);
  check.dtype(bias, "float32");
  check.shape(bias, {g.channels}, "(C,)");
  check.contiguous(bias, "(C,)");
  std::vector<const float*> m(g.positions);
  if (!py::isinstance<py::list>(m_arg)) {
    const TensorRef all = check.tensor(m_arg, "m");
    check.dtype(all, "float32");
    check.shape(all, {g.positions, g.tiles, g.channels}, "(P, tiles, C)");
    check.contiguous(all, "(P, tiles, C)");
    for (int64_t k = 0; k < g.positions; ++k) m[k] = reinterpret_cast<const float*>(all.ptr) + k * g.tiles * g.channels;
    const glam_fast::WinogradOutputArgs args{m.data(), reinterpret_cast<const float*>(bias.ptr), reinterpret_cast<float*>(y.ptr),
                                             g.batch, g.height, g.width, g.channels, kernel_size, threads};
    py::gil_scoped_release release;
    glam_fast::winograd_output_transform(args);
    return;
  }
  const auto m_objs = m_arg.cast<std::vector<py::handle>>();
  if (static_cast<int64_t>(m_objs.size()) != g.positions) {
    check.value_error("m must hold the " + std::to_string(g.positions) + " GEMM outputs of a " + std::to_string(kernel_size) + "x" +
                      std::to_string(kernel_size) + " kernel, got " + std::to_string(m_objs.size()));
  }
  for (int64_t k = 0; k < g.positions; ++k) {
    const std::string name = "m[" + std::to_string(k) + "]";
    const TensorRef t = check.tensor(m_objs[k], name.c_str());
    check.dtype(t, "float32");
    check.shape(t, {g.tiles, g.channels}, "(tiles, C)");
    check.contiguous(t, "(tiles, C)");
    m[k] = reinterpret_cast<const float*>(t.ptr);
  }
  const glam_fast::WinogradOutputArgs args{m.data(), reinterpret_cast<const float*>(bias.ptr), reinterpret_cast<float*>(y.ptr),
                                           g.batch, g.height, g.width, g.channels, kernel_size, threads};
  py::gil_scoped_release release;
  glam_fast::winograd_output_transform(args);
}

// ---- GLAM's stem and pooled concatenation (CPU) ----------------------------------------------

void glam_stem_cpu(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle out_obj, int threads) {
  const Checker check("glam_stem_cpu", Where::kHost);
  check.threads(threads);
  const TensorRef x = check.tensor(x_obj, "x"), weight = check.tensor(weight_obj, "weight");
  const TensorRef bias = check.tensor(bias_obj, "bias"), out = check.tensor(out_obj, "out");
  const int64_t C = glam_fast::kStemCpuChannels;
  for (const TensorRef* t : {&x, &weight, &bias, &out}) check.dtype(*t, "float32");
  check.shape(x, {-1, 1, -1, -1}, "(B, 1, H, W)");
  check.contiguous(x, "(B, 1, H, W)");
  const int64_t batch = x.shape[0], height = x.shape[2], width = x.shape[3];
  check.shape(weight, {2, 3, C}, "(2, 3, 16)");
  check.contiguous(weight, "(2, 3, 16)");
  check.shape(bias, {2, C}, "(2, 16)");
  check.contiguous(bias, "(2, 16)");
  check.shape(out, {batch, 2 * height, width, C}, "(B, 2H, W, 16)");
  check.contiguous(out, "(B, 2H, W, 16)");
  const glam_fast::StemCpuArgs args{reinterpret_cast<const float*>(x.ptr), reinterpret_cast<const float*>(weight.ptr),
                                    reinterpret_cast<const float*>(bias.ptr), reinterpret_cast<float*>(out.ptr), batch, height, width, threads};
  py::gil_scoped_release release;
  glam_fast::glam_stem_cpu(args);
}

void pool_concat_cpu(const std::vector<py::handle>& map_objs, py::handle out_obj, int threads) {
  const Checker check("pool_concat_cpu", Where::kHost);
  check.threads(threads);
  if (map_objs.empty()) check.value_error("needs at least one map");
  const TensorRef out = check.tensor(out_obj, "out");
  glam_fast::PoolConcatArgs args;
  int64_t total = 0;
  for (size_t i = 0; i < map_objs.size(); ++i) {
    const std::string name = "maps[" + std::to_string(i) + "]";
    const TensorRef t = check.tensor(map_objs[i], name.c_str());
    check.dtype(t, "float32");
    check.shape(t, {i ? args.batch : -1, i ? args.height : -1, i ? args.width : -1, -1}, "(B, H, W, C_i), B H W as maps[0]");
    check.contiguous(t, "(B, H, W, C_i) channels-last");
    if (i == 0) args.batch = t.shape[0], args.height = t.shape[1], args.width = t.shape[2];
    if (t.shape[3] % glam_fast::kPoolConcatChannelStep != 0) {
      check.value_error(name + " has " + std::to_string(t.shape[3]) + " channels; a multiple of " +
                        std::to_string(glam_fast::kPoolConcatChannelStep) + " is needed");
    }
    args.maps.push_back(reinterpret_cast<const float*>(t.ptr));
    args.channels.push_back(t.shape[3]);
    total += t.shape[3];
  }
  check.dtype(out, "float32");
  check.shape(out, {args.batch, args.height / 2, args.width / 2, total}, "(B, H / 2, W / 2, sum C_i)");
  check.contiguous(out, "(B, H / 2, W / 2, sum C_i)");
  args.out = reinterpret_cast<float*>(out.ptr);
  args.threads = threads;
  py::gil_scoped_release release;
  glam_fast::pool_concat_cpu(args);
}

// ---- GLAM's gMLP head (CPU) ----------------------------------------------------------------

// tokens (B, S, D) -> out (B, S, D); weights as gmlp_head_cpu.h lists them, scratch (z, hidden,
// gated). Every shape is checked against B, S, D and H = gate_norm_weight's length.
void gmlp_head(py::handle tokens_obj, const std::vector<py::handle>& weight_objs, const std::vector<py::handle>& scratch_objs,
               py::handle out_obj, double norm_eps, double gate_norm_eps, int threads) {
  const Checker check("gmlp_head", Where::kHost);
  check.threads(threads);
  static const char* weight_names[] = {"norm_weight", "norm_bias", "in_weight", "in_bias", "gate_norm_weight",
                                       "gate_norm_bias", "mix_weight", "mix_bias", "out_weight", "out_bias"};
  static const char* scratch_names[] = {"z", "hidden", "gated"};
  if (weight_objs.size() != 10) check.value_error("weights must hold the 10 packed head weights, got " + std::to_string(weight_objs.size()));
  if (scratch_objs.size() != 3) check.value_error("scratch must hold z, hidden and gated, got " + std::to_string(scratch_objs.size()));
  const TensorRef tokens = check.tensor(tokens_obj, "tokens"), out = check.tensor(out_obj, "out");
  std::vector<TensorRef> w, scratch;
  for (size_t i = 0; i < 10; ++i) w.push_back(check.tensor(weight_objs[i], weight_names[i]));
  for (size_t i = 0; i < 3; ++i) scratch.push_back(check.tensor(scratch_objs[i], scratch_names[i]));
  check.dtype(tokens, "float32");
  check.shape(tokens, {-1, -1, -1}, "(B, S, D)");
  const int64_t B = tokens.shape[0], S = tokens.shape[1], D = tokens.shape[2];
  check.shape(w[4], {-1}, "(H,)");
  const int64_t H = w[4].shape[0], Dp = glam_fast::gmlp_head_padded(D), Hp = glam_fast::gmlp_head_padded(H);
  if (S < 1 || D < 1 || H < 1) check.value_error("tokens and hidden features must be non-empty");
  const std::vector<std::pair<std::vector<int64_t>, const char*>> weight_shapes = {
      {{D}, "(D,)"}, {{D}, "(D,)"}, {{D, 2 * Hp}, "(D, 2 Hp)"}, {{2 * Hp}, "(2 Hp,)"}, {{H}, "(H,)"},
      {{H}, "(H,)"}, {{S, S}, "(S, S)"}, {{S}, "(S,)"}, {{H, Dp}, "(H, Dp)"}, {{D}, "(D,)"}};
  const std::vector<std::pair<std::vector<int64_t>, const char*>> scratch_shapes = {
      {{B, S, D}, "(B, S, D)"}, {{B, S, 2 * Hp}, "(B, S, 2 Hp)"}, {{B, S, Hp}, "(B, S, Hp)"}};
  check.contiguous(tokens, "(B, S, D)");
  for (size_t i = 0; i < 10; ++i) {
    check.dtype(w[i], "float32");
    check.shape(w[i], weight_shapes[i].first, weight_shapes[i].second);
    check.contiguous(w[i], weight_shapes[i].second);
  }
  for (size_t i = 0; i < 3; ++i) {
    check.dtype(scratch[i], "float32");
    check.shape(scratch[i], scratch_shapes[i].first, scratch_shapes[i].second);
    check.contiguous(scratch[i], scratch_shapes[i].second);
  }
  check.dtype(out, "float32");
  check.shape(out, {B, S, D}, "(B, S, D)");
  check.contiguous(out, "(B, S, D)");
  auto in = [&](size_t i) { return reinterpret_cast<const float*>(w[i].ptr); };
  auto scratch_ptr = [&](size_t i) { return reinterpret_cast<float*>(scratch[i].ptr); };
  const glam_fast::GMLPHeadArgs args{reinterpret_cast<const float*>(tokens.ptr), in(0), in(1), in(2), in(3), in(4), in(5), in(6), in(7), in(8),
                                     in(9), scratch_ptr(0), scratch_ptr(1), scratch_ptr(2), reinterpret_cast<float*>(out.ptr), B, S, D, H,
                                     static_cast<float>(norm_eps), static_cast<float>(gate_norm_eps), threads};
  py::gil_scoped_release release;
  glam_fast::gmlp_head(args);
}

void winograd_gemm(py::handle v_obj, py::handle u_obj, py::handle m_obj, int threads) {
  const Checker check("winograd_gemm", Where::kHost);
  check.threads(threads);
  const TensorRef v = check.tensor(v_obj, "v"), u = check.tensor(u_obj, "u"), m = check.tensor(m_obj, "m");
  for (const TensorRef* t : {&v, &u, &m}) check.dtype(*t, "float32");
  check.shape(v, {-1, -1, -1}, "(P, tiles, C_in)");
  const int64_t positions = v.shape[0], tiles = v.shape[1], in_channels = v.shape[2];
  check.shape(m, {positions, tiles, -1}, "(P, tiles, C_out)");
  const int64_t out_channels = m.shape[2];
  check.shape(u, {positions, in_channels * out_channels}, "(P, C_in * C_out) packed panels");
  if (out_channels % glam_fast::kWinogradChannelStep != 0) {
    check.value_error("m has " + std::to_string(out_channels) + " output channels; the GEMM needs a multiple of " +
                      std::to_string(glam_fast::kWinogradChannelStep));
  }
  check.contiguous(v, "(P, tiles, C_in)");
  check.contiguous(u, "(P, C_in * C_out) packed panels");
  check.contiguous(m, "(P, tiles, C_out)");
  const glam_fast::WinogradGemmArgs args{reinterpret_cast<const float*>(v.ptr), reinterpret_cast<const float*>(u.ptr), reinterpret_cast<float*>(m.ptr),
                                         positions, tiles, in_channels, out_channels, threads};
  py::gil_scoped_release release;
  glam_fast::winograd_gemm(args);
}

// (number of usable CUDA devices, reason when there are none)
py::tuple cuda_device_count() {
#ifdef GLAM_FAST_WITH_CUDA
  const auto result = glam_fast::cuda_device_count();
  return py::make_tuple(result.count, result.error);
#else
  return py::make_tuple(0, std::string("extension built without CUDA"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "glam_fast native extension (C++ / CUDA kernels)";
  m.def("build_info", &build_info,
        "What was compiled: version, compiler, CUDA archs, nvcc version and the list of kernels.");
  m.def("cuda_device_count", &cuda_device_count,
        "(count, error): CUDA devices visible to the extension's runtime, and why none if count == 0.");
  // Layout constants the Python side packs weights and sizes workspaces with.
  m.attr("conv5x5_k_tile") = glam_fast::kConv5x5TensorCoreKTile;
  m.attr("squeeze_excite_time_tile") = glam_fast::kSqueezeExciteTimeTile;
  m.def(
      "squeeze_excite_param_count", [](int filters, int n_mfcc) { return glam_fast::SqueezeExciteLayout(filters, n_mfcc).total; },
      py::arg("filters"), py::arg("n_mfcc"), "Floats of one direction's packed squeeze-excite parameters.");
  m.def("winograd_input_transform", &winograd_input_transform, py::arg("x"), py::arg("v"), py::arg("kernel_size"), py::arg("threads") = 1,
        "Winograd F(4x4, k x k) input transform on the CPU, k = kernel_size (3 or 5): x (B, H, W, C) NHWC float32 "
        "(padding (k - 1) / 2 implied) -> v (P, tiles, C), P = (k + 3)^2, tiles = B * ceil(H/4) * ceil(W/4); the tiles "
        "split over `threads` of PyTorch's OpenMP threads.");
  m.def("winograd_output_transform", &winograd_output_transform, py::arg("m"), py::arg("bias"), py::arg("y"), py::arg("kernel_size"), py::arg("threads") = 1,
        "Winograd F(4x4, k x k) output transform on the CPU: the GEMM outputs m, one (P, tiles, C) tensor or a list of "
        "P (tiles, C) ones -> y (B, H, W, C) NHWC = relu(A^T m A + bias).");
  m.def("winograd_gemm", &winograd_gemm, py::arg("v"), py::arg("u"), py::arg("m"), py::arg("threads") = 1,
        "The GEMMs of a Winograd convolution on the CPU: m[k] = v[k] @ u[k] for v (P, tiles, C_in), m (P, tiles, C_out) "
        "float32 contiguous (C_out a multiple of 16), u (P, C_in * C_out) each u[k] packed in column panels "
        "(glam_fast.winograd.pack_panels); split over `threads` of PyTorch's OpenMP threads.");
  m.def("glam_stem_cpu", &glam_stem_cpu, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("threads") = 1,
        "GLAM's stem on the CPU (csrc/glam_stem_cpu.h): x (B, 1, H, W) float32, taps weight (2, 3, 16), bias (2, 16) -> "
        "out (B, 2H, W, 16) = relu of both 3-tap convolutions, height-concatenated, channels-last.");
  m.def("pool_concat_cpu", &pool_concat_cpu, py::arg("maps"), py::arg("out"), py::arg("threads") = 1,
        "2x2 max pooling (stride 2) of channels-last maps (B, H, W, C_i) written side by side: out (B, H / 2, W / 2, sum C_i).");
  m.def("gmlp_head", &gmlp_head, py::arg("tokens"), py::arg("weights"), py::arg("scratch"), py::arg("out"), py::arg("norm_eps"),
        py::arg("gate_norm_eps"), py::arg("threads") = 1,
        "GLAM's gMLP head on the CPU (csrc/gmlp_head_cpu.h): tokens (B, S, D) float32 -> out (B, S, D) = relu(x) before the "
        "classifier; weights packed by glam_fast.gmlp_head_cpu, scratch (z, hidden, gated); the work split over `threads` "
        "of PyTorch's OpenMP threads.");
  m.attr("gmlp_head_column_step") = glam_fast::kGMLPHeadColumnStep;
  m.def("cpu_openmp_runtime", &glam_fast::cpu::openmp_runtime,
        "Path of the OpenMP runtime (PyTorch's libgomp) whose threads the CPU kernels (Winograd transforms, gMLP "
        "head) share; '' when they run on the calling thread only.");
#ifdef GLAM_FAST_WITH_CUDA
  m.def(
      "conv5x5_bias_relu",
      [](py::handle x, py::handle weight, py::handle bias, py::handle out, bool pool, std::uintptr_t stream) {
        const auto args = conv5x5_args(Where::kCuda, x, weight, bias, out, pool);
        glam_fast::conv5x5_bias_relu_cuda(args, device_of(x), stream);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("pool"), py::arg("stream"),
      "out = relu(conv5x5(x, weight) + bias), max-pooled 2x2 if pool; NHWC, on `stream`.");
  m.def(
      "conv5x5_bias_relu_emulated",
      [](py::handle x, py::handle weight, py::handle bias, py::handle out, bool pool) {
        glam_fast::conv5x5_bias_relu_host(conv5x5_args(Where::kHost, x, weight, bias, out, pool));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("pool"),
      "Host emulation of conv5x5_bias_relu (CPU tensors; slow; for tests).");
  m.def(
      "glam_stem",
      [](py::handle x, py::handle params, py::handle out, std::uintptr_t stream) {
        const auto args = stem_args(Where::kCuda, x, params, out);
        glam_fast::stem_cuda(args, device_of(x), stream);
      },
      py::arg("x"), py::arg("params"), py::arg("out"), py::arg("stream"),
      "GLAM stem (conv1a/conv1b + folded BN + ReLU, stacked along height), NHWC output, on `stream`.");
  m.def(
      "glam_stem_emulated",
      [](py::handle x, py::handle params, py::handle out) {
        glam_fast::stem_host(stem_args(Where::kHost, x, params, out));
      },
      py::arg("x"), py::arg("params"), py::arg("out"), "Host emulation of glam_stem (CPU tensors; for tests).");
  m.def(
      "squeeze_excite",
      [](py::handle mfcc, py::handle params, py::handle partial, py::handle out, std::uintptr_t stream) {
        const auto args = squeeze_excite_args(Where::kCuda, mfcc, params, partial, out);
        glam_fast::squeeze_excite_cuda(args, device_of(mfcc), stream);
      },
      py::arg("mfcc"), py::arg("params"), py::arg("partial_sums"), py::arg("out"), py::arg("stream"),
      "MS-SENet squeeze-and-excitation front end, both directions (two kernels), on `stream`.");
  m.def(
      "squeeze_excite_emulated",
      [](py::handle mfcc, py::handle params, py::handle partial, py::handle out) {
        glam_fast::squeeze_excite_host(squeeze_excite_args(Where::kHost, mfcc, params, partial, out));
      },
      py::arg("mfcc"), py::arg("params"), py::arg("partial_sums"), py::arg("out"),
      "Host emulation of squeeze_excite (CPU tensors; slow; for tests).");
#endif
}
