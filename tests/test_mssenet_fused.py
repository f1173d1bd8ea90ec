"""Fused MS-SENet (backend "triton") against the reference model: forward, every gradient, BatchNorm
running statistics, dropout masks, dtypes, torch.compile, no silent fallback, compile report."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glam_fast
from glam_fast import MSSENet
from glam_fast.models import mssenet as mssenet_model
from glam_fast.ops import dynamic_fusion, mssenet_forward
from tests.helpers import rel_err



@pytest.fixture(autouse=True)
def _seed(seeded):
    """Every test starts from the same global RNG state."""


def make_model(n_blocks=3, **kwargs) -> MSSENet:
    """A model whose BatchNorms, running statistics and fusion weights are random too (the
    defaults, 1 / 0 / 0 / 1 and +-0.05, would hide mistakes in them)."""
    model = MSSENet(n_blocks=n_blocks, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                m.bias.normal_(0, 0.1)
        model.fusion_weight.uniform_(-1, 1)
    return model


def fused(model, *args):
    with glam_fast.backend("triton"):
        return model(*args)


def reference(model, *args):
    with glam_fast.backend("torch"):
        return model(*args)


class MaskRecorder:
    """Stands in for channel_dropout_mask: draws as the real one does and records each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, p):
        mask = _real_channel_dropout_mask(x, p)
        self.calls.append((tuple(x.shape), x.dtype, p, mask.clone()))
        return mask


class MaskReplayer:
    """Replays recorded masks in order (in the caller's dtype), checking each call's shape and rate."""

    def __init__(self, recorded):
        self.pending = list(recorded)

    def __call__(self, x, p):
        shape, _, rate, mask = self.pending.pop(0)
        assert (tuple(x.shape), p) == (shape, rate)
        return mask.to(x.dtype)


_real_channel_dropout_mask = mssenet_model.channel_dropout_mask


def params_and_buffers(model):
    return dict(model.named_parameters()), dict(model.named_buffers())


def assert_grads_match(model, ref, tol=1e-5):
    ref_params = dict(ref.named_parameters())
    scale = max(p.grad.abs().max() for p in ref.parameters())
    for name, p in model.named_parameters():
        want = ref_params[name].grad
        if name.endswith(("conv_time.bias", "conv_freq.bias", "conv_square.bias", "conv1.bias", "conv2.bias")) and model.training:
            # these biases feed BatchNorms with batch statistics, which cancel them: true grad 0
            assert p.grad.abs().max() < tol * scale, name
        else:
            assert rel_err(p.grad, want) < tol, name


@pytest.mark.parametrize("batch, length", [(2, 1), (3, 2), (2, 37), (1, 188)])
def test_eval_matches_float64_reference(batch, length):
    model = make_model().eval()
    ref = copy.deepcopy(model).double()
    x = torch.randn(batch, length, 39)
    with torch.no_grad():
        out = fused(model, x)
        want = reference(ref, x.double())
    assert out.shape == (batch, 4) and out.dtype == torch.float32
    assert rel_err(out, want) < 1e-5


def test_train_step_matches_float64_reference(monkeypatch):
    """Forward, input and parameter grads, running statistics, num_batches_tracked; the reference
    replays the fused run's dropout masks, which also checks their shapes, rates and order."""
    model = make_model().train()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 37, 39, requires_grad=True)
    x_ref = x.detach().double().requires_grad_()
    upstream = torch.randn(2, 4)
    recorder = MaskRecorder()
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", recorder)
    out = fused(model, x)
    (out * upstream).sum().backward()
    assert len(recorder.calls) == 2 * (3 + 2 * 3)
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", MaskReplayer(recorder.calls))
    want = reference(ref, x_ref)
    (want * upstream.double()).sum().backward()
    assert rel_err(out, want) < 1e-5
    assert rel_err(x.grad, x_ref.grad) < 1e-5
    assert_grads_match(model, ref)
    for name, buf in model.named_buffers():
        ref_buf = dict(ref.named_buffers())[name]
        if name.endswith("num_batches_tracked"):
            assert int(buf) == int(ref_buf) == 1, name
        else:
            assert rel_err(buf, ref_buf) < 1e-6, name


def test_full_model_train_step_matches_float64_reference(monkeypatch):
    """All 10 blocks (dilations up to 512, far beyond T) at a short length."""
    model = make_model(n_blocks=10).train()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 5, 39)
    recorder = MaskRecorder()
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", recorder)
    out = fused(model, x)
    out.square().sum().backward()
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", MaskReplayer(recorder.calls))
    want = reference(ref, x.double())
    want.square().sum().backward()
    assert rel_err(out, want) < 1e-5
    assert_grads_match(model, ref)


def test_eval_gradients_match_float64_reference():
    model = make_model(n_blocks=2).eval()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 9, 39, requires_grad=True)
    x_ref = x.detach().double().requires_grad_()
    fused(model, x).square().sum().backward()
    reference(ref, x_ref).square().sum().backward()
    assert rel_err(x.grad, x_ref.grad) < 1e-5
    assert_grads_match(model, ref)
    assert all(int(b) == 0 for n, b in model.named_buffers() if n.endswith("num_batches_tracked"))


def test_seeded_dropout_equals_a_seeded_reference_run(monkeypatch):
    """Same seed, same masks: channel_dropout_mask is called with the same shapes, dtype and rates
    in the same order, so the global RNG hands both runs the same masks."""
    model = make_model(n_blocks=2).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 6, 39)
    fused_calls, ref_calls = MaskRecorder(), MaskRecorder()
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", fused_calls)
    torch.manual_seed(7)
    out = fused(model, x)
    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", ref_calls)
    torch.manual_seed(7)
    want = reference(ref, x)
    assert [c[:3] for c in fused_calls.calls] == [c[:3] for c in ref_calls.calls]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(fused_calls.calls, ref_calls.calls))
    assert any(bool((c[3] == 0).any()) for c in fused_calls.calls)  # some channels really dropped
    assert rel_err(out, want) < 1e-5
    torch.manual_seed(8)
    assert rel_err(fused(model, x), want) > 1e-3  # another seed, other masks


def test_injected_masks_reach_the_kernels(monkeypatch):
    model = make_model(n_blocks=2).train()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 6, 39)

    def half_dropped(x, p):
        mask = torch.ones(x.shape[:2], dtype=x.dtype)
        mask[:, ::2] = 0
        return mask / (1 - p)

    monkeypatch.setattr(mssenet_model, "channel_dropout_mask", half_dropped)
    assert rel_err(fused(model, x), reference(ref, x)) < 1e-5


_COUNTED = {
    "torch.nn.functional": ["conv1d", "conv2d", "batch_norm", "linear", "relu", "pad"],
    "torch": ["sigmoid", "einsum", "conv1d", "conv2d", "batch_norm"],
}


@pytest.fixture
def op_counter(monkeypatch):
    """Counts calls of the PyTorch compute functions the reference model uses."""
    counts = {}
    for module, names in _COUNTED.items():
        target = F if module == "torch.nn.functional" else torch
        for name in names:
            real = getattr(target, name)

            def counting(*args, _real=real, _key=f"{module}.{name}", **kwargs):
                counts[_key] = counts.get(_key, 0) + 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(target, name, counting)
    return counts


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fused_path_runs_no_pytorch_compute(op_counter, mode):
    model = make_model(n_blocks=1).train(mode == "train")
    x = torch.randn(2, 3, 39, requires_grad=True)
    fused(model, x).sum().backward()
    assert op_counter == {}
    reference(model, x).sum()
    assert op_counter["torch.nn.functional.conv2d"] == 2 * 4  # the counter sees the reference: 3 branches + collapse


def test_fp16_model_within_twice_the_eager_half_error():
    model = make_model().eval()
    half = copy.deepcopy(model).half()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 23, 39)
    with torch.no_grad():
        out = fused(half, x.half())
        eager = reference(half, x.half())
        want = reference(ref, x.double())
    assert out.dtype == torch.float16
    assert rel_err(out, want) <= 2 * rel_err(eager, want) + 1e-4


def test_autocast_fp16_within_twice_the_eager_autocast_error():
    model = make_model().eval()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 23, 39)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = fused(model, x)
        eager = reference(model, x)
    want = reference(ref, x.double())
    assert out.dtype == eager.dtype == torch.float16
    assert rel_err(out, want) <= 2 * rel_err(eager, want) + 1e-4


def test_training_needs_two_values_per_channel():
    with pytest.raises(ValueError, match=r"more than one frame in the batch.*\(1, 1, 39\)"):
        fused(make_model().train(), torch.randn(1, 1, 39))


def test_inference_parameter_cache_follows_weight_changes():
    model = mssenet_forward.prepare_mssenet(make_model(n_blocks=2).eval())
    x = torch.randn(2, 7, 39)
    with torch.no_grad():
        first = fused(model, x)
        model.backward_direction.blocks[1].conv2.weight.mul_(1.5)  # in place: same storage, new version
        second = fused(model, x)
        assert rel_err(second, first) > 1e-4
        assert rel_err(second, reference(model, x)) < 1e-5
        model.load_state_dict(make_model(n_blocks=2).state_dict())
        assert rel_err(fused(model, x), reference(model, x)) < 1e-5


def test_torch_compile_fullgraph_matches_eager():
    """The fused ops trace into one graph (dynamo + AOTAutograd through the custom ops), forward
    in eval and forward + backward in training (without dropout: compiled RNG differs)."""
    model = make_model(n_blocks=1, front_dropout=0.0, block_dropout=0.0).eval()
    x = torch.randn(2, 4, 39)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: mssenet_forward.mssenet_forward(model, x), fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), fused(model, x)) < 1e-6
    model.train()
    twin = copy.deepcopy(model)
    xg = x.clone().requires_grad_()
    compiled(xg).square().sum().backward()
    xe = x.clone().requires_grad_()
    fused(twin, xe).square().sum().backward()
    assert rel_err(xg.grad, xe.grad) < 1e-6
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-6 or p.grad.abs().max() < 1e-6, name
    for a, b in zip(model.buffers(), twin.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6)


def test_dynamic_fusion_opcheck():
    means = torch.randn(3, 2, 5, 7)
    args = (means, torch.randn(3), torch.randn(4, 7), torch.randn(4))
    torch.library.opcheck(dynamic_fusion.dynamic_fusion, tuple(a.requires_grad_() for a in args))
    logits = dynamic_fusion.dynamic_fusion(*args)
    assert rel_err(logits, dynamic_fusion.dynamic_fusion_ref(*(a.double() for a in args))) < 1e-6


def _assert_within_twice_eager_error(runs, models, floor, grad_floor):
    """runs: the (fused, eager, reference) outputs; models: the same three models after their
    backward, or None in eval. The fused output and every parameter grad within twice eager's own
    error against the reference, plus a floor."""
    out, eager, want = runs
    assert rel_err(out, want) <= 2 * rel_err(eager, want) + floor
    if models is None:
        return
    model, eager_model, ref = models
    scale = max(q.grad.abs().max() for q in ref.parameters())
    for (name, p), e, r in zip(model.named_parameters(), eager_model.parameters(), ref.parameters()):
        if r.grad.abs().max() > 1e-4 * scale:  # skip the BatchNorm-cancelled conv biases
            assert rel_err(p.grad, r.grad) <= 2 * rel_err(e.grad, r.grad) + grad_floor, name


@pytest.mark.gpu
@pytest.mark.parametrize("mode, batch", [("eval", 256), ("train", 64)])
def test_gpu_bf16_full_size_matches_reference(mode, batch):
    """T = 606, autocast bf16 (batch 256 in eval; 64 in training, where the fp32 reference keeps
    every activation for its backward): the fused error against an fp32 reference (whose own
    error is far below bf16's) stays within twice eager autocast's; in training the parameter
    grads too, with the fused run's dropout masks replayed into both references."""
    torch.manual_seed(0)
    model = make_model(n_blocks=10).cuda().train(mode == "train")
    eager_model = copy.deepcopy(model)
    ref = copy.deepcopy(model)
    x = torch.randn(batch, 606, 39, device="cuda")
    upstream = torch.randn(batch, 4, device="cuda", dtype=torch.float64)
    recorder = MaskRecorder()
    real = mssenet_model.channel_dropout_mask
    try:
        runs = []
        for m, autocast, masks in ((model, True, recorder), (eager_model, True, None), (ref, False, None)):
            mssenet_model.channel_dropout_mask = masks or MaskReplayer(recorder.calls)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(mode == "train"):
                out = (fused if m is model else reference)(m, x)
            if mode == "train":
                (out.double() * upstream).sum().backward()
            runs.append(out.detach().double())
    finally:
        mssenet_model.channel_dropout_mask = real
    _assert_within_twice_eager_error(runs, (model, eager_model, ref) if mode == "train" else None, floor=1e-3, grad_floor=1e-3)


@pytest.mark.gpu
def test_gpu_fp32_full_size_training_matches_float64():
    """T = 606, 39 MFCCs, 64 channels in fp32 training (the recipe's default): the launch
    configuration must fit the GPU (at 256 positions the fp32 front-end backward kernels needed
    more shared memory than sm_90 has), and the output and every gradient stay within twice eager
    fp32's own error against float64 (TF32 off, PyTorch's default for matmuls)."""
    torch.manual_seed(0)
    model = make_model(n_blocks=10).cuda().train()
    eager_model = copy.deepcopy(model)
    ref = copy.deepcopy(model).double()
    x = torch.randn(16, 606, 39, device="cuda")
    upstream = torch.randn(16, 4, device="cuda", dtype=torch.float64)
    recorder = MaskRecorder()
    real = mssenet_model.channel_dropout_mask
    try:
        runs = []
        for m, masks in ((model, recorder), (eager_model, None), (ref, None)):
            mssenet_model.channel_dropout_mask = masks or MaskReplayer(recorder.calls)
            out = (fused if m is model else reference)(m, x.to(next(m.parameters()).dtype))
            (out.double() * upstream).sum().backward()
            runs.append(out.detach().double())
    finally:
        mssenet_model.channel_dropout_mask = real
    _assert_within_twice_eager_error(runs, (model, eager_model, ref), floor=1e-5, grad_floor=1e-4)
