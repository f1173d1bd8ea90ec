"""The one place that decides which backend runs an op: ``torch``, ``triton`` or ``cuda``.

A user asks for a backend with the environment variable ``GLAM_FAST_BACKEND`` (read when first
needed) or, scoped and thread-safe, with ``with glam_fast.backend("triton"): ...``. ``auto`` (the
default) picks, per op and per device: the PyTorch reference on the CPU; on a GPU the Triton
kernel, or the CUDA C++ kernel where that was measured faster on this device model and shape
(see :mod:`glam_fast.backend_tuning`; with no measurement ``auto`` never picks ``cuda``), except
for the ops in ``AUTO_KEEPS_REFERENCE_ON_GPU`` (fused form measured slower than the reference). Asking
explicitly for a backend that cannot run an op on a device is an error that says why: a fused
path never silently falls back to PyTorch.

Fused implementations register themselves with :func:`register`; the plain-PyTorch reference
(``torch``) implements every op and lives in the models themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator

import torch

BACKENDS = ("auto", "torch", "triton", "cuda")
ENV_VAR = "GLAM_FAST_BACKEND"

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("glam_fast_backend", default=None)
# Mirror of the innermost backend() block as a plain global: torch.compile cannot trace the
# ContextVar, but it guards on globals, so a compiled model is retraced when the request changes.
# (Process-wide: compiling under different backends in concurrent threads is not supported.)
_compile_request: str | None = None
_implementations: dict[tuple[str, str], Callable] = {}

class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this op on this device; the message says why."""


def _validate(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def requested_backend() -> str:
    """The backend the caller asked for: the innermost ``backend()`` block, else the env var."""
    name = _requested.get()
    if name is not None:
        return name
    return _validate(os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR)


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Run the enclosed code with backend ``name`` (auto | torch | triton | cuda).

    Checks happen when an op runs (availability depends on the tensor's device), so entering
    ``backend("triton")`` on a machine without Triton is fine until a model is called.
    """
    global _compile_request
    value = _validate(name, "backend")
    token = _requested.set(value)
    previous, _compile_request = _compile_request, value
    try:
        yield value
    finally:
        _requested.reset(token)
        _compile_request = previous


def register(op: str, backend_name: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` for ``backend_name`` ('triton' or 'cuda')."""
    if backend_name not in ("triton", "cuda"):
        raise ValueError(f"only fused backends register implementations, got {backend_name!r}")

    def decorator(fn: Callable) -> Callable:
        _implementations[(op, backend_name)] = fn
        return fn

    return decorator


def implementation(op: str, backend_name: str) -> Callable:
    """The registered implementation of ``op`` for a fused backend (KeyError if none)."""
    _load_fused_ops()
    return _implementations[(op, backend_name)]


_fused_ops_loaded = False


def _load_fused_ops() -> None:
    """Import glam_fast.ops once, so its modules register their implementations. Deferred to the
    first dispatch so that `import glam_fast` needs neither Triton nor the extension."""
    global _fused_ops_loaded
    if not _fused_ops_loaded:
        _fused_ops_loaded = True
        import glam_fast.ops  # noqa: F401


def _triton_missing(device: torch.device) -> str:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not installed ({err})"
    if device.type == "cuda":
        return ""
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return ""
        return "triton runs CPU tensors only under its interpreter (set TRITON_INTERPRET=1)"
    return f"triton does not support {device.type} tensors"


def _cuda_missing(device: torch.device) -> str:
    from glam_fast import _extension

    info = _extension.build_info()
    if not info["built"]:
        return info["reason"]
    if not info["cuda"]:
        return "the native extension was built without nvcc (no CUDA kernels compiled)"
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"the cuda kernels need compute capability 8.0 or newer (cp.async, bf16 mma), {device} has {capability[0]}.{capability[1]}"
    return ""


def unavailable_reason(backend_name: str, device: torch.device | str) -> str:
    """Why ``backend_name`` cannot run on ``device`` at all ('' when it can)."""
    device = torch.device(device)
    if backend_name == "torch":
        return ""
    if backend_name == "triton":
        return _triton_missing(device)
    if backend_name == "cuda":
        return _cuda_missing(device)
    raise ValueError(f"unknown backend {backend_name!r}; expected one of {', '.join(BACKENDS[1:])}")


def _missing_for_op(op: str, backend_name: str, device: torch.device) -> str:
    if backend_name == "torch":
        return ""
    _load_fused_ops()
    reason = unavailable_reason(backend_name, device)
    if reason:
        return reason
    if (op, backend_name) not in _implementations:
        return f"there is no {backend_name} implementation of '{op}'"
    return ""


def resolve(
    op: str,
    device: torch.device | str,
    bucket: str | None = None,
    runner: Callable[[str], Callable[[], object]] | None = None,
) -> str:
    """The concrete backend that runs ``op`` on ``device`` under the current request.

    For ``auto``, ``bucket`` (:func:`glam_fast.backend_tuning.shape_bucket` of the op's inputs)
    selects the measurement to consult, and ``runner`` lets ``auto`` make one when there is none:
    ``runner(backend)`` returns a zero-argument callable that runs the op on its real inputs with
    that backend, without side effects. Without a bucket there is no measurement to use, and
    ``auto`` does not pick ``cuda``.

    Under ``torch.compile`` the choice is made while tracing and becomes a constant of the graph;
    the graph is guarded on the ``backend()`` request (a different request retraces), but not on
    ``GLAM_FAST_BACKEND``, which is read once at trace time.

    Raises :class:`BackendUnavailableError` when a backend was asked for explicitly and cannot
    run this op there.
    """
    if torch.compiler.is_compiling():
        device = torch.device(device)
        request = _compile_request  # a guarded global read: see its definition
        return _resolve_while_compiling(op, device.type, -1 if device.index is None else device.index, request or "")
    return _resolve(op, device, bucket, runner)


@torch.compiler.assume_constant_result
def _resolve_while_compiling(op: str, device_type: str, device_index: int, request: str) -> str:
    device = torch.device(device_type) if device_index < 0 else torch.device(device_type, device_index)
    with backend(request) if request else contextlib.nullcontext():
        return _resolve(op, device)


def _resolve(
    op: str,
    device: torch.device | str,
    bucket: str | None = None,
    runner: Callable[[str], Callable[[], object]] | None = None,
) -> str:
    """:func:`resolve` outside of torch.compile tracing."""
    device = torch.device(device)
    requested = requested_backend()
    if requested == "auto":
        return _auto_choice(op, device, bucket, runner)
    reason = _missing_for_op(op, requested, device)
    if reason:
        raise BackendUnavailableError(
            f"backend '{requested}' cannot run '{op}' on {device}: {reason}. "
            f"Use glam_fast.backend('torch') (or GLAM_FAST_BACKEND=torch) for the PyTorch reference."
        )
    return requested


# Ops whose fused forms were measured slower than the PyTorch reference on a GPU: ``auto`` runs the
# reference for them (an explicit backend("triton") still runs the fused path).
AUTO_KEEPS_REFERENCE_ON_GPU = {
    # H100, bf16 autocast, inference and training at batch 1 and 1024: 0.93-0.96x eager (the
    # fused attention pooling is a small part of the step; the AlexNet trunk is cuDNN either way).
    # bench/results/nvidia-h100-80gb-hbm3-20261122-222537-42e5966373.json
    "afcn": "fused AFCN measured 0.93-0.96x eager PyTorch on an H100",
}


def _auto_choice(op: str, device: torch.device, bucket: str | None, runner: Callable[[str], Callable[[], object]] | None) -> str:
    if device.type != "cuda" or op in AUTO_KEEPS_REFERENCE_ON_GPU:
        return "torch"
    fused = [name for name in ("triton", "cuda") if not _missing_for_op(op, name, device)]
    if "cuda" not in fused:
        return fused[0] if fused else "torch"
    # cuda only where it was measured faster than what would run otherwise.
    rival = "triton" if "triton" in fused else "torch"
    if bucket is None:
        return rival
    from glam_fast import backend_tuning

    candidates = ("cuda", rival)
    name = backend_tuning.device_name(device)
    choice = backend_tuning.recorded_choice(op, name, bucket, candidates)
    if choice is None and runner is not None and backend_tuning.tuning_enabled() and backend_tuning.can_measure_now():
        choice = backend_tuning.measure(op, name, bucket, {candidate: runner(candidate) for candidate in candidates})
    return choice or rival


def backend_status(device: torch.device | str | None = None) -> dict[str, str]:
    """For each concrete backend, '' if it can run on ``device`` (default: cuda if present), else why not."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {name: unavailable_reason(name, device) for name in BACKENDS[1:]}


def registered_ops(backend_name: str) -> list[str]:
    """Names of the ops that ``backend_name`` implements."""
    _load_fused_ops()
    return sorted(op for op, b in _implementations if b == backend_name)
