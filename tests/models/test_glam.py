"""GLAM reference model: parameter counts, the authors' state_dict, shapes, modes, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

import glam_fast
from glam_fast import GLAM
from tests.helpers import rel_err


def authors_state_dict(shape=(26, 57), num_classes=4, seed=0) -> dict[str, torch.Tensor]:
    """A state_dict written out by hand with the authors' names and nesting (MODELS.md §1),
    random values everywhere (BatchNorm running statistics too)."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    d = (h // 2) * (w // 4)
    sd = {}

    def rand(*s, scale=0.1):
        return torch.randn(*s, generator=g) * scale

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = 1 + rand(c)
        sd[f"{prefix}.bias"] = rand(c)
        sd[f"{prefix}.running_mean"] = rand(c)
        sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1a.weight"], sd["conv1a.bias"] = rand(16, 1, 3, 1, scale=0.5), rand(16)
    sd["conv1b.weight"], sd["conv1b.bias"] = rand(16, 1, 1, 3, scale=0.5), rand(16)
    bn("bn1a", 16)
    bn("bn1b", 16)
    for name, c in (("conv2", 16), ("conv3", 32), ("conv4", 64)):
        sd[f"{name}.conv3.weight"], sd[f"{name}.conv3.bias"] = rand(c, c, 3, 3, scale=(c * 9) ** -0.5), rand(c)
        sd[f"{name}.conv5.weight"], sd[f"{name}.conv5.bias"] = rand(c, c, 5, 5, scale=(c * 25) ** -0.5), rand(c)
        bn(f"{name}.bn", 2 * c)
    sd["conv5.weight"], sd["conv5.bias"] = rand(128, 128, 5, 5, scale=(128 * 25) ** -0.5), rand(128)
    bn("bn5", 128)
    p = "gmlp.layers.0.fn"
    sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"] = 1 + rand(d), rand(d)
    sd[f"{p}.fn.fn.proj_in.0.weight"], sd[f"{p}.fn.fn.proj_in.0.bias"] = rand(4 * d, d, scale=d**-0.5), rand(4 * d)
    sd[f"{p}.fn.fn.sgu.norm.weight"], sd[f"{p}.fn.fn.sgu.norm.bias"] = 1 + rand(2 * d), rand(2 * d)
    sd[f"{p}.fn.fn.sgu.weight"] = rand(1, 128, 128, scale=128**-0.5)
    sd[f"{p}.fn.fn.sgu.bias"] = 1 + rand(1, 128)
    sd[f"{p}.fn.fn.proj_out.weight"], sd[f"{p}.fn.fn.proj_out.bias"] = rand(d, 2 * d, scale=(2 * d) ** -0.5), rand(d)
    sd["fc.weight"], sd["fc.bias"] = rand(num_classes, 128 * d, scale=(128 * d) ** -0.5), rand(num_classes)
    return sd


def functional_glam(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """GLAM inference written from MODELS.md with torch.nn.functional only (an independent construction)."""

    def bn(prefix, t):
        return F.batch_norm(t, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, 1e-5)

    def multiscale(prefix, t):
        a = F.conv2d(t, sd[f"{prefix}.conv3.weight"], sd[f"{prefix}.conv3.bias"], padding=1) + t
        b = F.conv2d(t, sd[f"{prefix}.conv5.weight"], sd[f"{prefix}.conv5.bias"], padding=2) + t
        return F.relu(bn(f"{prefix}.bn", torch.cat([a, b], 1)))

    xa = F.relu(bn("bn1a", F.conv2d(x, sd["conv1a.weight"], sd["conv1a.bias"], padding=(1, 0))))
    xb = F.relu(bn("bn1b", F.conv2d(x, sd["conv1b.weight"], sd["conv1b.bias"], padding=(0, 1))))
    t = torch.cat([xa, xb], 2)
    t = F.max_pool2d(multiscale("conv2", t), 2)
    t = F.max_pool2d(multiscale("conv3", t), 2)
    t = multiscale("conv4", t)
    t = F.relu(bn("bn5", F.conv2d(t, sd["conv5.weight"], sd["conv5.bias"], padding=2)))
    X = t.reshape(t.shape[0], 128, -1)
    p = "gmlp.layers.0.fn"
    d = X.shape[-1]
    Z = F.layer_norm(X, (d,), sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], 1e-5)
    U = F.gelu(Z @ sd[f"{p}.fn.fn.proj_in.0.weight"].T + sd[f"{p}.fn.fn.proj_in.0.bias"])
    R, G = U[..., : 2 * d], U[..., 2 * d :]
    G = F.layer_norm(G, (2 * d,), sd[f"{p}.fn.fn.sgu.norm.weight"], sd[f"{p}.fn.fn.sgu.norm.bias"], 1e-5)
    G = torch.einsum("mn,bnd->bmd", sd[f"{p}.fn.fn.sgu.weight"][0], G) + sd[f"{p}.fn.fn.sgu.bias"][0][None, :, None]
    Y = (torch.tanh(G) * R) @ sd[f"{p}.fn.fn.proj_out.weight"].T + sd[f"{p}.fn.fn.proj_out.bias"] + X
    return F.relu(Y).flatten(1) @ sd["fc.weight"].T + sd["fc.bias"]


@pytest.mark.parametrize("shape, count", [((26, 57), 904_078), ((26, 63), 940_283)])
def test_parameter_count(shape, count):
    assert sum(p.numel() for p in GLAM(shape=shape).parameters()) == count


@pytest.mark.parametrize("shape", [(26, 57), (26, 63), (20, 41)])
def test_authors_state_dict_loads_strictly_and_matches_independent_construction(shape):
    sd = authors_state_dict(shape)
    model = GLAM(shape=shape)
    assert set(model.state_dict()) == set(sd)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(3, 1, *shape)
    with torch.no_grad():
        ours = model(x)
        ref = functional_glam({k: v.double() for k, v in sd.items()}, x.double())
    assert ours.shape == (3, 4)
    assert rel_err(ours, ref) < 1e-5


def test_sgu_initialisation():
    torch.manual_seed(0)
    sgu = GLAM().gmlp.layers[0].fn.fn.fn.sgu
    assert sgu.weight.abs().max() <= 1e-3 / 128
    assert sgu.weight.abs().max() > 0
    assert torch.equal(sgu.bias, torch.ones(1, 128))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shape", [(26, 57), (26, 63), (13, 17)])
def test_output_shape(batch, shape):
    model = GLAM(shape=shape, num_classes=7).eval()
    assert model(torch.randn(batch, 1, *shape)).shape == (batch, 7)


def test_train_updates_batch_norm_statistics_and_eval_does_not(seeded):
    model = GLAM()
    x = torch.randn(4, 1, 26, 57)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.train()(x)
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    snapshot = {k: v.clone() for k, v in after.items()}
    model.eval()(x)
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())


def test_eval_items_independent_of_batch_but_train_items_are_not(seeded):
    model = GLAM()
    x = torch.randn(5, 1, 26, 57)
    model.eval()
    with torch.no_grad():
        together, alone = model(x), model(x[2:3])
    assert rel_err(together[2:3], alone) < 1e-5
    model.train()
    with torch.no_grad():
        together, subset = model(x), model(x[:3])
    assert rel_err(together[:3], subset) > 1e-3  # batch statistics depend on the whole batch


def test_deterministic_under_seed():
    torch.manual_seed(7)
    a = GLAM()
    torch.manual_seed(7)
    b = GLAM()
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    x = torch.randn(2, 1, 26, 57)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_backward_reaches_every_parameter(seeded):
    model = GLAM()
    model(torch.randn(3, 1, 26, 57)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(2, 26, 57), ValueError, r"4-D input of shape \(B, 1, 26, 57\)"),
        (torch.randn(2, 1, 26, 63), ValueError, r"\(B, 1, 26, 57\).*dim 3 is 63, expected 57"),
        (torch.randn(2, 3, 26, 57), ValueError, r"dim 1 is 3, expected 1"),
        (torch.randn(0, 1, 26, 57), ValueError, "empty batch"),
        (torch.randint(0, 9, (2, 1, 26, 57)), TypeError, "floating-point"),
        (torch.randn(2, 1, 26, 57, dtype=torch.float64), TypeError, "float64.*float32"),
        (torch.randn(2, 1, 26, 57, device="meta"), ValueError, "input is on meta but the model is on cpu"),
        (torch.randn(2, 1, 26, 57).tolist(), TypeError, "torch.Tensor"),  # NumPy arrays are DLPack arrays: accepted
    ],
)
def test_bad_input_errors_name_the_expected_shape(x, error, match):
    with pytest.raises(error, match=match):
        GLAM()(x)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="shape"):
        GLAM(shape=(26, 3))
    with pytest.raises(ValueError, match="num_classes"):
        GLAM(num_classes=0)


def test_autocast_input_dtype_is_accepted():
    model = GLAM().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 26, 57, dtype=torch.bfloat16))
    assert out.shape == (2, 4)


def test_explicit_fused_backend_without_kernels_is_a_clear_error():
    with glam_fast.backend("cuda"), pytest.raises(glam_fast.BackendUnavailableError, match="backend 'cuda' cannot run 'glam'"):
        GLAM()(torch.randn(1, 1, 26, 57))
