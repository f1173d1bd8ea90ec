"""What gets measured: the models (with their benchmark input sizes) and the variants that run them.

A measurement is (model, variant, dtype, mode, batch):

- model: one of :data:`MODELS` (GLAM, MS-SENet, AFCN), built fresh from a fixed seed;
- variant: one of :data:`VARIANTS`, i.e. how the reference model is run: eager PyTorch, a
  ``torch.compile`` mode, or a glam_fast backend (``with glam_fast.backend(name)``);
- dtype: ``fp32``, or ``bf16`` = ``torch.autocast(bfloat16)`` around the forward (fp32 weights,
  as in mixed-precision training and the usual way to run a model in bf16);
- mode: ``inference`` (``torch.inference_mode()``, eval mode) or ``train`` (a full step:
  forward, cross-entropy, backward, Adam step, in train mode).

Adding a variant is one :func:`register_variant` call, e.g. fused kernels inside torch.compile::

    register_variant(Variant("triton-compiled", "glam_fast Triton kernels under torch.compile",
                             peer=False, backend="triton", compile_mode="default", cost=1))

A glam_fast backend that registers an implementation through ``glam_fast.dispatch`` is picked up
without any change here, and one that cannot run is reported with the reason
``dispatch.resolve`` gives, never run as something else.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import glam_fast
from glam_fast import dispatch

MODES = ("inference", "train")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # None: no autocast
MODEL_SEED = 20240601
ADAM_LR = 1e-4


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model and its benchmark inputs.

    ``item_shapes`` maps a size profile to the shape of one item: ``full`` (the GPU runner and the
    full CPU suite), ``quick`` (the quick CPU suite) and ``tiny`` (dry runs that only check that
    every code path runs). ``variable_length``: the model also takes (B,) valid lengths along the
    last axis of the item.
    """

    name: str
    title: str
    op: str  # the glam_fast.dispatch op name
    factory: Callable[[], nn.Module]
    item_shapes: dict[str, tuple[int, ...]]
    input_note: str
    num_classes: int = 4
    variable_length: bool = False

    def build(self) -> nn.Module:
        """The reference model with deterministic random parameters (fp32, CPU)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return self.factory()

    def item_shape(self, profile: str) -> tuple[int, ...]:
        return self.item_shapes[profile]


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


register_model(
    ModelSpec(
        name="glam",
        title="GLAM",
        op="glam",
        factory=lambda: glam_fast.GLAM(shape=(26, 57), num_classes=4),
        item_shapes={"full": (1, 26, 57), "quick": (1, 26, 57), "tiny": (1, 26, 57)},
        input_note="one 1.8 s segment of 26 MFCCs x 57 frames",
    )
)
register_model(
    ModelSpec(
        name="mssenet",
        title="MS-SENet",
        op="mssenet",
        factory=lambda: glam_fast.MSSENet(num_classes=4),
        item_shapes={"full": (606, 39), "quick": (150, 39), "tiny": (24, 39)},
        input_note="one utterance of T frames x 39 MFCCs (T = 606; 150 in the quick CPU suite)",
    )
)
register_model(
    ModelSpec(
        name="afcn",
        title="AFCN",
        op="afcn",
        factory=lambda: glam_fast.AFCN(num_classes=4),
        # 3 s at 16 kHz with n_fft 512 / hop 160: 257 bins x 300 frames; the trunk needs >= 63.
        item_shapes={"full": (3, 257, 300), "quick": (3, 257, 300), "tiny": (3, 64, 80)},
        input_note="one 3-channel spectrogram, 257 bins x 300 frames (3 s at 16 kHz, n_fft 512, hop 160), per-item lengths in [T/2, T]",
        variable_length=True,
    )
)


@dataclass
class Batch:
    """One input batch: positional arguments of the model's forward, and class labels (B,)."""

    args: tuple[torch.Tensor, ...]
    labels: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.args, self.labels))


def make_batches(spec: ModelSpec, profile: str, batch: int, device: torch.device | str, count: int, seed: int = 0) -> list[Batch]:
    """``count`` different random batches (standard normal features, never constant), identical for
    every variant given the same arguments. AFCN batches carry lengths in [T/2, T], item 0 full."""
    device = torch.device(device)
    shape = spec.item_shape(profile)
    generator = torch.Generator(device=device)
    batches = []
    for index in range(count):
        generator.manual_seed(1_000_003 * seed + 7919 * batch + index)
        x = torch.randn((batch, *shape), generator=generator, device=device)
        labels = torch.randint(0, spec.num_classes, (batch,), generator=generator, device=device)
        args: tuple[torch.Tensor, ...] = (x,)
        if spec.variable_length:
            t = shape[-1]
            lengths = torch.randint(max(t // 2, 1), t + 1, (batch,), generator=generator, device=device)
            lengths[0] = t
            args = (x, lengths)
        batches.append(Batch(args, labels))
    return batches


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------


class ReferenceForward(nn.Module):
    """The plain-PyTorch forward of a glam_fast model (``forward_reference``: no input checks, no
    dispatch), i.e. exactly what a user's own PyTorch model would run. Peers run this."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model.forward_reference(*args)


@dataclass(frozen=True)
class BuildOptions:
    """Run-wide settings a variant's build may need."""

    compile_backend: str = "inductor"  # "eager" in dry runs: exercises dynamo without inductor's cost


@dataclass(frozen=True)
class Variant:
    """One way to run a model.

    Args:
        name: short id used in results and tables.
        description: one line for the report.
        peer: True for what a user can run without glam_fast (the baselines fused code must beat).
        backend: the glam_fast backend the model runs under (``torch`` for the peers).
        compile_mode: None (eager), or a ``torch.compile`` mode ("default", "max-autotune", ...).
        dynamic: ``torch.compile``'s ``dynamic`` argument (None: torch's default).
        cost: run order; cheaper classes run first so a time budget drops the costly ones.
        batches: only these batch sizes (None: all requested); the GPU runner can override.
        dtypes: only these dtypes (None: all requested).
        cpu_suite: included in the CPU pytest-benchmark suite.
        build: optional custom builder ``(model, options) -> callable(*args) -> logits``
            replacing the standard one (e.g. a CUDA-graph wrapper).
    """

    name: str
    description: str
    peer: bool
    backend: str = "torch"
    compile_mode: str | None = None
    dynamic: bool | None = None
    cost: int = 0
    batches: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    cpu_suite: bool = True
    build: Callable[[nn.Module, BuildOptions], Callable[..., torch.Tensor]] | None = field(default=None, compare=False)

    def unavailable(self, spec: ModelSpec, device: torch.device | str, mode: str = "inference") -> str:
        """'' when this variant can run ``spec`` in ``mode`` on ``device``, else why not."""
        if self.backend == "torch":
            return ""
        if self.backend == "cuda" and mode == "train":
            return "the cuda backend runs inference only (its kernels have no backward)"
        try:
            with glam_fast.backend(self.backend):
                dispatch.resolve(spec.op, torch.device(device))
        except dispatch.BackendUnavailableError as err:
            return str(err)
        return ""

    def forward_fn(self, model: nn.Module, options: BuildOptions) -> Callable[..., torch.Tensor]:
        """The callable that runs ``model`` under this variant (compiled lazily on first call)."""
        if self.build is not None:
            return self.build(model, options)
        # Peers run the plain reference forward; glam_fast backends run the model's own forward
        # (input checks + dispatch), as a user of glam_fast would.
        fn: Callable[..., torch.Tensor] = ReferenceForward(model) if self.backend == "torch" else model
        if self.compile_mode is not None:
            kwargs: dict = {"fullgraph": True, "dynamic": self.dynamic, "backend": options.compile_backend}
            if options.compile_backend == "inductor" and self.compile_mode != "default":
                kwargs["mode"] = self.compile_mode
            fn = torch.compile(fn, **kwargs)
        return fn

    def context(self) -> contextlib.AbstractContextManager:
        """Entered around every call: pins the glam_fast backend (peers pin ``torch``, so that a
        fused backend registered later can never turn a peer into itself)."""
        return glam_fast.backend(self.backend)

    def describe(self) -> dict:
        return {
            "description": self.description,
            "peer": self.peer,
            "backend": self.backend,
            "compile_mode": self.compile_mode,
            "dynamic": self.dynamic,
        }


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add a variant (runs in registration order within its cost class)."""
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant
    return variant


register_variant(Variant("eager", "PyTorch reference, eager (cuDNN / oneDNN)", peer=True))
register_variant(
    Variant(
        "compile",
        "torch.compile(reference, fullgraph=True), default mode and dynamic=None (torch's default: "
        "specialised at the first batch size, one dynamic-batch graph for the others)",
        peer=True,
        compile_mode="default",
        cost=1,
    )
)
register_variant(
    Variant(
        "compile-max-autotune",
        "torch.compile(reference, mode='max-autotune', fullgraph=True, dynamic=False): autotuned "
        "GEMM/conv templates and CUDA graphs, one graph per batch size",
        peer=True,
        compile_mode="max-autotune",
        dynamic=False,
        cost=2,
        cpu_suite=False,
    )
)
register_variant(
    Variant(
        "compile-cudagraphs",
        "torch.compile(reference, mode='reduce-overhead', fullgraph=True, dynamic=False): default "
        "kernels replayed as CUDA graphs (what small batches need)",
        peer=True,
        compile_mode="reduce-overhead",
        dynamic=False,
        cost=3,
        batches=(1, 32),
        cpu_suite=False,
    )
)
for _backend in ("triton", "cuda"):
    register_variant(Variant(_backend, f"glam_fast, with glam_fast.backend({_backend!r})", peer=False, backend=_backend))


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def build_step(
    spec: ModelSpec,
    variant: Variant,
    mode: str,
    dtype: str,
    device: torch.device | str,
    reference: nn.Module | None = None,
    options: BuildOptions = BuildOptions(),
) -> Callable[[Batch], None]:
    """A function running one inference call or one training step on a batch.

    The model is a fresh copy of ``reference`` (default: ``spec.build()``) on ``device``; a
    training step owns its Adam optimizer. Nothing is synchronised: timing is the caller's job.
    """
    device = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if variant.compile_mode is not None:
        raise_recompile_limits()
    model = copy.deepcopy(reference if reference is not None else spec.build()).to(device)
    model.train(mode == "train")
    forward = variant.forward_fn(model, options)

    if mode == "inference":

        def inference_step(batch: Batch) -> None:
            with torch.inference_mode(), variant.context(), _autocast(device, dtype):
                forward(*batch.args)

        return inference_step

    optimizer = torch.optim.Adam(model.parameters(), lr=ADAM_LR)

    def train_step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with variant.context():
            with _autocast(device, dtype):
                loss = F.cross_entropy(forward(*batch.args).float(), batch.labels)
            loss.backward()
        optimizer.step()

    return train_step


def raise_recompile_limits(limit: int = 256) -> None:
    """Every compiled variant wraps the same ``ReferenceForward.forward`` code object, and dynamo
    caps the graphs per code object (8 by default) before silently running eager: lift the cap."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def rotating(step: Callable[[Batch], None], batches: Sequence[Batch]) -> Callable[[], None]:
    """A no-argument call that runs ``step`` on the next batch, cycling: repeated calls never
    re-read the same input back to back."""
    cycle: Iterator[Batch] = itertools.cycle(batches)
    return lambda: step(next(cycle))


# ----------------------------------------------------------------------------------------------
# Work per item
# ----------------------------------------------------------------------------------------------


def count_flops(spec: ModelSpec, profile: str, reference: nn.Module | None = None) -> dict[str, float]:
    """FLOPs per item counted with ``torch.utils.flop_counter.FlopCounterMode`` on the reference
    model (fp32, CPU, batch 2): ``inference`` = forward in eval mode, ``train`` = forward +
    backward in train mode (the optimizer step is not counted). Matmuls and convolutions only."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(reference if reference is not None else spec.build())
    batch = make_batches(spec, profile, 2, "cpu", 1)[0]
    with glam_fast.backend("torch"):
        model.eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.forward_reference(*batch.args)
        forward = counter.get_total_flops() / 2
        model.train()
        counter = FlopCounterMode(display=False)
        with counter:
            F.cross_entropy(model.forward_reference(*batch.args), batch.labels).backward()
        train = counter.get_total_flops() / 2
    return {"inference": forward, "train": train}


def memory_per_item(spec: ModelSpec, profile: str, mode: str, reference: nn.Module | None = None) -> float:
    """Rough activation bytes per item (fp32, batch 2 on the CPU): for ``train`` the tensors
    autograd saves for backward; for ``inference`` 4 x the largest intermediate. Used to skip
    sizes a machine cannot hold instead of swapping or being killed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = copy.deepcopy(reference if reference is not None else spec.build())
    batch = make_batches(spec, profile, 2, "cpu", 1)[0]
    if mode == "train":
        model.train()
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.forward_reference(*batch.args)
        return sum(seen.values()) / 2

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel() * t.element_size())
            return out

    model.eval()
    with torch.inference_mode(), LargestOutput():
        model.forward_reference(*batch.args)
    return 4 * LargestOutput.largest / 2


def parse_list(text: str | None, allowed: Sequence[str] | None = None, what: str = "value") -> list[str] | None:
    """'a,b' -> ['a', 'b'] (None stays None); each checked against ``allowed``."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise ValueError(f"unknown {what} {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return items
