"""The cuda backend's ops (glam_fast.ops.cuda_kernels).

Without a GPU (CI): the extension's host emulation of each kernel (the kernels' own per-thread
code, run in loops over blocks and threads) against the float64 PyTorch reference, at awkward
shapes and for fp32 / fp16 / bf16; the weight folding; argument checks in Python and in the
binding; the packed-weight cache; the torch.library registration. The emulation checks indexing
and arithmetic; it cannot check the tensor-core instructions, the async-copy pipeline or races.
With a GPU (tests marked gpu): the kernels themselves against the reference and the emulation.
"""

import pytest
import torch
import torch.nn.functional as F

import glam_fast
from glam_fast import GLAM, MSSENet, dispatch
from glam_fast.dispatch import BackendUnavailableError
from glam_fast.models.glam import ResMultiConv
from glam_fast.ops import cuda_kernels as ck
from tests.helpers import rel_err

CUDA_BUILD = glam_fast.build_info().get("cuda", False)
needs_cuda_build = pytest.mark.skipif(not CUDA_BUILD, reason="the extension was built without its CUDA sources")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative error vs the float64 reference (TESTING.md): fp32 without TF32, fp16, bf16 (inputs,
# folded weights and outputs rounded to the dtype; fp32 accumulation).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def randomize_batch_norms(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Running statistics and affine parameters away from their defaults (never the identity)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=generator))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=generator))
            m.bias.data.copy_(0.2 * torch.randn(m.num_features, generator=generator))
    return module.eval()


def double(args):
    return tuple(a.double() if isinstance(a, torch.Tensor) else a for a in args)


def block_args(channels: int, pool: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    m = randomize_batch_norms(ResMultiConv(channels), g)
    return (m.conv3.weight, m.conv3.bias, m.conv5.weight, m.conv5.bias, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var, m.bn.eps, pool)


def glam_model(seed: int = 0) -> GLAM:
    torch.manual_seed(seed)
    return randomize_batch_norms(GLAM(), torch.Generator().manual_seed(seed))


def stem_args(model: GLAM):
    return (
        model.conv1a.weight, model.conv1a.bias, model.conv1b.weight, model.conv1b.bias,
        model.bn1a.weight, model.bn1a.bias, model.bn1a.running_mean, model.bn1a.running_var,
        model.bn1b.weight, model.bn1b.bias, model.bn1b.running_mean, model.bn1b.running_var, model.bn1a.eps,
    )  # fmt: skip


def conv5_args(model: GLAM):
    return (model.conv5.weight, model.conv5.bias, model.bn5.weight, model.bn5.bias, model.bn5.running_mean, model.bn5.running_var, model.bn5.eps)


def mssenet_fronts(n_mfcc=39, n_filters=39, seed=0):
    torch.manual_seed(seed)
    model = randomize_batch_norms(MSSENet(n_mfcc=n_mfcc, n_filters=n_filters, n_blocks=1), torch.Generator().manual_seed(seed))
    with torch.no_grad():  # Keras init leaves the biases at zero: make them count
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0, 0.1)
    return model.forward_direction.front, model.backward_direction.front


def check_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any(), "unwritten (poisoned) output elements"
    err = rel_err(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.3g} for {dtype}"


# ---------------------------------------------------------------------------------------------
# Folding: pure PyTorch, no extension needed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [16, 32])
def test_folded_multiscale_block_is_one_5x5_convolution(channels):
    args = block_args(channels, pool=False)
    x = torch.randn(2, channels, 9, 11, dtype=torch.float64)
    weight, bias = ck.fold_multiscale_block(*args[:-1])
    assert weight.shape == (2 * channels, channels, 5, 5) and bias.shape == (2 * channels,)
    folded = F.relu(F.conv2d(x, weight, bias, padding=2))
    with torch.no_grad():
        ref = ck.multiscale_block_inference_ref(x.permute(0, 2, 3, 1), *double(args)).permute(0, 3, 1, 2)
        module = ResMultiConv(channels).double().eval()
        module.load_state_dict({k: v.double() for k, v in _block_state(args).items()})
        assert rel_err(module(x), ref) < 1e-12  # the reference op is the module's math
    assert rel_err(folded, ref) < 1e-12


def _block_state(args):
    names = ("conv3.weight", "conv3.bias", "conv5.weight", "conv5.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    return {**dict(zip(names, args[:8])), "bn.num_batches_tracked": torch.tensor(0)}


def test_references_match_the_models():
    model = glam_model().double()
    x = torch.randn(2, 1, 26, 57, dtype=torch.float64)
    with torch.no_grad():
        stem = ck.stem_inference_ref(x, *stem_args(model))
        expected = torch.cat((F.relu(model.bn1a(model.conv1a(x))), F.relu(model.bn1b(model.conv1b(x)))), dim=2)
        assert rel_err(stem, expected.permute(0, 2, 3, 1)) < 1e-12
        h = torch.randn(2, 128, 13, 14, dtype=torch.float64)
        conv5 = ck.conv_bn_relu_inference_ref(h.permute(0, 2, 3, 1), *conv5_args(model))
        assert rel_err(conv5, F.relu(model.bn5(model.conv5(h))).permute(0, 2, 3, 1)) < 1e-12
    forward, reverse = mssenet_fronts()
    mfcc = torch.randn(2, 20, 39)
    with torch.no_grad():
        se = ck.squeeze_excite_inference_ref(mfcc, forward, reverse)
        assert rel_err(se, torch.stack([forward(mfcc), reverse(mfcc.flip(1))])) < 1e-6


# ---------------------------------------------------------------------------------------------
# Host emulation of the kernels vs the float64 reference
# ---------------------------------------------------------------------------------------------

BLOCK_SHAPES = [  # (C, pool, B, H, W): tails in every dimension, odd sizes under pooling
    (16, True, 1, 52, 57),  # GLAM's first block at 26 x 57 MFCC
    (16, False, 3, 7, 9),
    (32, True, 5, 13, 15),
    (32, False, 1, 6, 63),
    (64, False, 3, 13, 14),  # GLAM's third block
    (64, True, 1, 5, 7),
]


@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels,pool,batch,height,width", BLOCK_SHAPES)
def test_multiscale_block_emulation(channels, pool, batch, height, width, dtype):
    args = block_args(channels, pool, seed=channels + batch)
    x = torch.randn(batch, height, width, channels).to(dtype)
    with torch.no_grad():
        out = ck.multiscale_block_inference(x, *args, emulate=True)
        ref = ck.multiscale_block_inference_ref(x.double(), *double(args))
    check_close(out, ref, dtype)


@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout,batch,height,width", [(128, 128, 2, 13, 14), (16, 32, 3, 5, 9)])
def test_conv_bn_relu_emulation(cin, cout, batch, height, width, dtype):
    torch.manual_seed(cin)
    conv, bn = torch.nn.Conv2d(cin, cout, 5, padding=2), torch.nn.BatchNorm2d(cout)
    randomize_batch_norms(bn, torch.Generator().manual_seed(cin))
    args = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    x = torch.randn(batch, height, width, cin).to(dtype)
    with torch.no_grad():
        out = ck.conv_bn_relu_inference(x, *args, emulate=True)
        ref = ck.conv_bn_relu_inference_ref(x.double(), *double(args))
    check_close(out, ref, dtype)


@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,height,width", [(1, 26, 57), (3, 26, 63), (5, 7, 1)])
def test_stem_emulation(batch, height, width, dtype):
    model = glam_model(seed=batch)
    x = torch.randn(batch, 1, height, width).to(dtype)
    with torch.no_grad():
        out = ck.stem_inference(x, *stem_args(model), emulate=True)
        ref = ck.stem_inference_ref(x.double(), *double(stem_args(model)))
    check_close(out, ref, dtype)


@needs_cuda_build
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,time,n_mfcc,n_filters", [(3, 45, 39, 39), (1, 1, 39, 39), (2, 64, 13, 20)])
def test_squeeze_excite_emulation(batch, time, n_mfcc, n_filters, dtype):
    forward, reverse = mssenet_fronts(n_mfcc, n_filters, seed=time)
    mfcc = torch.randn(batch, time, n_mfcc).to(dtype)
    with torch.no_grad():
        out = ck.squeeze_excite_inference(mfcc, forward, reverse, emulate=True)
        ref = ck.squeeze_excite_inference_ref(mfcc.double(), double_state(forward), double_state(reverse))
    check_close(out, ref, dtype)


def double_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in module.state_dict().items()}


@needs_cuda_build
def test_emulation_composes_glam_up_to_conv5():
    """stem -> three multi-scale blocks -> conv5, channels-last, equals the model's own layers."""
    model = glam_model(seed=3)
    x = torch.randn(2, 1, 26, 57)
    with torch.no_grad():
        h = ck.stem_inference(x, *stem_args(model), emulate=True)
        for block, pool in ((model.conv2, True), (model.conv3, True), (model.conv4, False)):
            h = ck.multiscale_block_inference(h, *block_args_of(block), pool, emulate=True)
        h = ck.conv_bn_relu_inference(h, *conv5_args(model), emulate=True)
        model.double()
        ref = torch.cat((F.relu(model.bn1a(model.conv1a(x.double()))), F.relu(model.bn1b(model.conv1b(x.double())))), 2)
        ref = F.max_pool2d(model.conv3(F.max_pool2d(model.conv2(ref), 2)), 2)
        ref = F.relu(model.bn5(model.conv5(model.conv4(ref))))
    assert h.shape == (2, 13, 14, 128)
    check_close(h, ref.permute(0, 2, 3, 1), torch.float32)


def block_args_of(block: ResMultiConv):
    return (block.conv3.weight, block.conv3.bias, block.conv5.weight, block.conv5.bias, block.bn.weight, block.bn.bias,
            block.bn.running_mean, block.bn.running_var, block.bn.eps)  # fmt: skip


@needs_cuda_build
def test_outputs_start_poisoned():
    """The ops allocate their outputs NaN-filled under GLAM_FAST_POISON=1 (set by conftest), so the
    comparisons above fail on any element a kernel does not write."""
    assert ck._conv5x5_output(torch.empty(1, 4, 4, 16), 32, True).isnan().all()
    assert ck._stem_output(torch.empty(1, 1, 3, 4)).isnan().all()
    assert ck._squeeze_excite_output(torch.empty(1, 5, 39), 39)[0].isnan().all()


# ---------------------------------------------------------------------------------------------
# Packed-weight cache
# ---------------------------------------------------------------------------------------------


@needs_cuda_build
def test_packed_weights_follow_parameter_updates():
    args = block_args(16, pool=False)
    x = torch.randn(1, 5, 6, 16)
    with torch.no_grad():
        first = ck.multiscale_block_inference(x, *args, emulate=True)
        assert torch.equal(ck.multiscale_block_inference(x, *args, emulate=True), first)
        args[2].mul_(-1.5)  # an in-place update (an optimizer step) must invalidate the packing
        args[6].add_(0.25)  # ... as must a change of a BatchNorm statistic
        updated = ck.multiscale_block_inference(x, *args, emulate=True)
        ref = ck.multiscale_block_inference_ref(x.double(), *double(args))
    check_close(updated, ref, torch.float32)
    assert not torch.allclose(updated, first)


@needs_cuda_build
def test_packed_weights_are_not_reused_across_models():
    x = torch.randn(1, 5, 6, 16)
    with torch.no_grad():
        for seed in range(4):  # fresh models may reuse freed memory and ids
            args = block_args(16, pool=False, seed=seed)
            out = ck.multiscale_block_inference(x, *args, emulate=True)
            check_close(out, ck.multiscale_block_inference_ref(x.double(), *double(args)), torch.float32)
            del args


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def test_python_argument_checks_name_the_problem():
    args = block_args(16, pool=True)
    x = torch.randn(2, 6, 7, 16)
    op = ck.multiscale_block_inference
    with pytest.raises(TypeError, match="float32, float16 or bfloat16, got torch.float64"):
        op(x.double(), *args, emulate=True)
    with pytest.raises(ValueError, match=r"contiguous .*call \.contiguous\(\)"):
        op(torch.randn(2, 16, 6, 7).permute(0, 2, 3, 1), *args, emulate=True)
    with pytest.raises(ValueError, match="C must be 16, 32 or 64"):
        op(torch.randn(2, 6, 7, 24), *args, emulate=True)
    with pytest.raises(ValueError, match="4-D"):
        op(torch.randn(6, 7, 16), *args, emulate=True)
    with pytest.raises(ValueError, match=r"conv5_weight must have shape \(16, 16, 5, 5\)"):
        op(x, args[0], args[1], args[0], *args[3:], emulate=True)
    with pytest.raises(ValueError, match="bn_weight is on meta but the input is on cpu"):
        op(x, *args[:4], args[4].to("meta"), *args[5:], emulate=True)
    with pytest.raises(ValueError, match="pooling needs H >= 2"):
        op(torch.randn(2, 1, 7, 16), *args, emulate=True)
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors, got a cpu tensor"):
        op(x, *args)
    with pytest.raises(ValueError, match=r"\(Cin, Cout\) must be"):
        ck.conv_bn_relu_inference(torch.randn(1, 4, 4, 16), torch.randn(16, 16, 5, 5), *[torch.randn(16)] * 5, 1e-5, emulate=True)
    forward, reverse = mssenet_fronts()
    with pytest.raises(ValueError, match=r"lacks the front-end tensors \['project.weight'\]"):
        ck.squeeze_excite_inference(torch.randn(1, 5, 39), forward, {k: v for k, v in reverse.state_dict().items() if k != "project.weight"}, emulate=True)
    with pytest.raises(ValueError, match=r"project.weight'\] must have shape \(39, 52, 1\)"):
        ck.squeeze_excite_inference(torch.randn(1, 5, 13), forward, reverse, emulate=True)


def test_training_is_refused_with_the_reason():
    args = block_args(16, pool=False)
    with pytest.raises(BackendUnavailableError, match="inference kernels only.*torch.no_grad"):
        ck.multiscale_block_inference(torch.randn(1, 4, 4, 16), *args, emulate=True)  # parameters require grad


def test_ops_say_why_when_the_extension_has_no_cuda_kernels(monkeypatch):
    from glam_fast import _extension

    monkeypatch.setattr(_extension, "build_info", lambda: {"built": True, "reason": "", "cuda": False})
    with torch.no_grad(), pytest.raises(BackendUnavailableError, match="built without nvcc"):
        ck.multiscale_block_inference(torch.randn(1, 4, 4, 16), *block_args(16, pool=False), emulate=True)


@needs_cuda_build
def test_binding_checks_arguments_before_any_launch():
    native = ck._native()
    d = ck._descriptor
    x, bias = torch.randn(2, 6, 7, 16), torch.randn(32)
    weight, out = torch.randn(400, 32), torch.empty(2, 3, 3, 32)
    native.conv5x5_bias_relu_emulated(d(x), d(weight), d(bias), d(out), True)  # well-formed: runs
    with pytest.raises(ValueError, match="x must be a CUDA tensor, got a cpu tensor"):
        native.conv5x5_bias_relu(d(x), d(weight), d(bias), d(out), True, 0)
    with pytest.raises(ValueError, match=r"out must have shape \(B, H_out, W_out, Cout\) = \(2, 3, 3, 32\)"):
        native.conv5x5_bias_relu_emulated(d(x), d(weight), d(bias), d(torch.empty(2, 6, 7, 32)), True)
    with pytest.raises(TypeError, match="weight must be float32, got float16"):
        native.conv5x5_bias_relu_emulated(d(x), d(weight.half()), d(bias), d(out), True)
    with pytest.raises(ValueError, match="no kernel for Cin=16 -> Cout=48"):
        native.conv5x5_bias_relu_emulated(d(x), d(weight), d(torch.randn(48)), d(out), True)
    with pytest.raises(ValueError, match="must be contiguous"):
        native.conv5x5_bias_relu_emulated(d(x.transpose(1, 2)), d(weight), d(bias), d(out), True)
    misaligned = torch.randn(2 * 6 * 7 * 16 + 1)[1:].view(2, 6, 7, 16)
    with pytest.raises(ValueError, match="16-byte boundary"):
        native.conv5x5_bias_relu_emulated(d(misaligned), d(weight), d(bias), d(out), True)
    with pytest.raises(TypeError, match="tensor descriptor"):
        native.conv5x5_bias_relu_emulated(x, d(weight), d(bias), d(out), True)
    mfcc = torch.randn(1, 5, 39)
    params = torch.zeros(2, native.squeeze_excite_param_count(39, 39))
    with pytest.raises(ValueError, match=r"partial_sums must have shape \(2, B, tiles, F\) = \(2, 1, 1, 39\)"):
        native.squeeze_excite_emulated(d(mfcc), d(params), d(torch.empty(2, 1, 2, 39)), d(torch.empty(2, 1, 39, 5)))
    with pytest.raises(ValueError, match="1..64 filters"):
        native.squeeze_excite_emulated(d(mfcc), d(params), d(torch.empty(2, 1, 1, 65)), d(torch.empty(2, 1, 65, 5)))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        native.glam_stem_emulated(d(torch.randn(1, 2, 3, 4)), d(torch.zeros(128)), d(torch.empty(1, 6, 4, 16)))


# ---------------------------------------------------------------------------------------------
# Registration: dispatch and torch.library
# ---------------------------------------------------------------------------------------------

OPS = ("multiscale_block_inference", "conv_bn_relu_inference", "stem_inference", "squeeze_excite_inference")


def test_ops_are_registered_for_the_cuda_backend():
    assert set(OPS) <= set(dispatch.registered_ops("cuda"))
    for name in OPS:
        assert dispatch.implementation(name, "cuda") is getattr(ck, name)
        assert callable(getattr(ck, f"{name}_ref"))


def test_cuda_backend_on_cpu_tensors_and_models_without_a_cuda_forward_say_why():
    with glam_fast.backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="cuda"):
            dispatch.resolve("multiscale_block_inference", "cpu")
        with pytest.raises(BackendUnavailableError):
            dispatch.resolve("glam", "cpu")


@needs_cuda_build
def test_custom_ops_pass_opcheck():
    forward, reverse = mssenet_fronts(n_mfcc=6, n_filters=5)
    with torch.no_grad():
        conv_weight, conv_bias = ck._pack_conv5x5(*ck.fold_multiscale_block(*block_args(16, False)[:-1]), torch.float16)
        params = torch.stack([ck.fold_squeeze_excite(ck._front_end_tensors(f, ""), 1e-3) for f in (forward, reverse)]).float()
    x = torch.randn(1, 4, 6, 16, dtype=torch.float16)
    torch.library.opcheck(torch.ops.glam_fast.cuda_conv5x5_bias_relu.default, (x, conv_weight, conv_bias, True))
    torch.library.opcheck(torch.ops.glam_fast.cuda_glam_stem.default, (torch.randn(2, 1, 3, 5), torch.randn(128)))
    torch.library.opcheck(torch.ops.glam_fast.cuda_squeeze_excite.default, (torch.randn(2, 7, 6), params, 5))


@needs_cuda_build
def test_full_graph_compile_traces_the_ops():
    args = block_args(32, pool=True)
    x = torch.randn(1, 6, 5, 32)

    def block(x):
        return ck.multiscale_block_inference(x, *args, emulate=True)

    with torch.no_grad():
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        check_close(compiled(x), ck.multiscale_block_inference_ref(x.double(), *double(args)), torch.float32)


# ---------------------------------------------------------------------------------------------
# On a GPU: the kernels themselves
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels,pool,batch,height,width", BLOCK_SHAPES + [(16, True, 5, 52, 63), (32, True, 3, 26, 28)])
def test_gpu_multiscale_block(channels, pool, batch, height, width, dtype):
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in block_args(channels, pool))
    x = torch.randn(batch, height, width, channels, device="cuda").to(dtype)
    with torch.no_grad():
        out = ck.multiscale_block_inference(x, *args)
        ref = ck.multiscale_block_inference_ref(x.double(), *double(args))
        check_close(out, ref, dtype)
        emulated = ck.multiscale_block_inference(x.cpu(), *(a.cpu() if isinstance(a, torch.Tensor) else a for a in args), emulate=True)
        # Same per-thread code: fp32 FMAs in the same order; tensor-core sums may be ordered differently.
        assert rel_err(out.cpu(), emulated) < (1e-6 if dtype == torch.float32 else TOLERANCE[dtype] / 4)
        if ("multiscale_block_inference", "triton") in dispatch._implementations:
            triton_out = dispatch.implementation("multiscale_block_inference", "triton")(x, *args)
            check_close(triton_out, ref, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_gpu_stem_and_conv5(batch, dtype):
    model = glam_model(seed=batch).cuda()
    x = torch.randn(batch, 1, 26, 57, device="cuda").to(dtype)
    h = torch.randn(batch, 13, 14, 128, device="cuda").to(dtype)
    with torch.no_grad():
        check_close(ck.stem_inference(x, *stem_args(model)), ck.stem_inference_ref(x.double(), *double(stem_args(model))), dtype)
        check_close(ck.conv_bn_relu_inference(h, *conv5_args(model)), ck.conv_bn_relu_inference_ref(h.double(), *double(conv5_args(model))), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,time", [(1, 1), (3, 45), (5, 606)])
def test_gpu_squeeze_excite(batch, time, dtype):
    forward, reverse = (f.cuda() for f in mssenet_fronts(seed=time))
    mfcc = torch.randn(batch, time, 39, device="cuda").to(dtype)
    with torch.no_grad():
        out = ck.squeeze_excite_inference(mfcc, forward, reverse)
        check_close(out, ck.squeeze_excite_inference_ref(mfcc.double(), double_state(forward), double_state(reverse)), dtype)
        assert torch.equal(out, ck.squeeze_excite_inference(mfcc, forward, reverse))  # deterministic squeeze


@pytest.mark.gpu
def test_gpu_kernels_run_on_the_current_stream():
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in block_args(32, True))
    x = torch.randn(64, 26, 28, 32, device="cuda")
    side = torch.cuda.Stream()
    with torch.no_grad():
        expected = ck.multiscale_block_inference(x, *args)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = ck.multiscale_block_inference(x, *args)
        torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(out, expected)


@pytest.mark.gpu
def test_gpu_argument_checks():
    args = block_args(16, pool=False)
    with torch.no_grad(), pytest.raises(ValueError, match="is on cpu but the input is on cuda"):
        ck.multiscale_block_inference(torch.randn(1, 4, 4, 16, device="cuda"), *args)
    with glam_fast.backend("cuda"):
        assert dispatch.resolve("multiscale_block_inference", "cuda") == "cuda"
        assert dispatch.resolve("glam", "cuda") == "cuda"
        with pytest.raises(BackendUnavailableError, match="no cuda implementation of 'afcn'"):
            dispatch.resolve("afcn", "cuda")


@pytest.mark.gpu
def test_gpu_auto_measures_before_choosing_cuda(tmp_path, monkeypatch):
    from glam_fast import backend_tuning

    monkeypatch.setenv(backend_tuning.CACHE_ENV, str(tmp_path / "tuning.json"))
    monkeypatch.delenv(backend_tuning.TUNING_ENV, raising=False)
    backend_tuning.forget()
    op = "multiscale_block_inference"
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in block_args(16, True))
    x = torch.randn(32, 52, 57, 16, device="cuda", dtype=torch.float16)
    bucket = backend_tuning.shape_bucket(x, pool=True)
    with glam_fast.backend("auto"), torch.no_grad():
        assert dispatch.resolve(op, x.device, bucket) != "cuda"  # nothing measured yet
        choice = dispatch.resolve(op, x.device, bucket, backend_tuning.op_runner(op, ck.multiscale_block_inference_ref, x, *args))
    entry = backend_tuning.recorded(op, backend_tuning.device_name(x.device), bucket)
    assert entry is not None and entry["choice"] == choice and set(entry["median_ms"]) >= {"cuda"}
    backend_tuning.forget()
