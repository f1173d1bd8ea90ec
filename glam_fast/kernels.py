"""Compile every Triton kernel for real GPU architectures, on a machine without a GPU.

Each op module registers, with :func:`register_compile_specs`, a provider of
:class:`KernelSpec`s: its kernels at the block sizes / warps / stages its launcher really uses.
:func:`compile_report` compiles them for sm_80 or sm_90 and reads registers, spills (local
memory) and shared memory from the cubin with ``cuobjdump -res-usage``. This catches what the
interpreter lets through: ``tl.dot`` shape rules, constexpr misuse, shared-memory overflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_providers: list[Callable[[], Iterable["KernelSpec"]]] = []

# Hopper and Ampere data-center parts: 228 KiB / 164 KiB shared memory per SM.
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel at one launch configuration.

    ``signature`` maps every argument name to a Triton type ('*fp32', '*bf16', 'i32', 'fp32', ...)
    or 'constexpr'; ``constexprs`` gives the value of each constexpr argument. As Triton's launcher
    does for 16-byte-aligned tensors, pointer arguments are compiled as 16-byte aligned; integer
    arguments named in ``multiple_of_16`` are compiled as multiples of 16 (the launcher specialises
    such values; name only those that are multiples of 16 in every launch the spec stands for).
    ``tuning_groups`` names the autotuning problems (if any) the spec is a candidate config for.
    """

    op: str
    name: str
    kernel: object
    signature: dict[str, str]
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    multiple_of_16: tuple[str, ...] = ()
    tuning_groups: tuple[str, ...] = ()


def register_compile_specs(provider: Callable[[], Iterable[KernelSpec]]) -> Callable[[], Iterable[KernelSpec]]:
    """Decorator for a zero-argument function returning the KernelSpecs of an op module."""
    _providers.append(provider)
    return provider


def kernel_specs() -> list[KernelSpec]:
    """Every registered KernelSpec (importing glam_fast.ops registers them)."""
    import glam_fast.ops  # noqa: F401

    return [spec for provider in _providers for spec in provider()]


def _jit_function(kernel: object):
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction) and hasattr(kernel, "fn"):
        kernel = kernel.fn  # Autotuner / Heuristics wrappers
    if not isinstance(kernel, JITFunction):
        raise TypeError(f"not a Triton kernel: {kernel!r}")
    return kernel


def _cuobjdump() -> str | None:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.isfile(bundled) else shutil.which("cuobjdump")


def _resource_usage(cubin: bytes) -> dict[str, int]:
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in found.items()}


def compile_kernel(spec: KernelSpec, arch: int) -> dict:
    """Compile one spec for sm_<arch>; returns its resource usage or the compile error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {"op": spec.op, "kernel": spec.name, "arch": arch, "num_warps": spec.num_warps, "num_stages": spec.num_stages,
           "tuning_groups": list(spec.tuning_groups)}  # fmt: skip
    try:
        fn = _jit_function(spec.kernel)
        divisible = [[["tt.divisibility", 16]] if t.startswith("*") or name in spec.multiple_of_16 else None for name, t in spec.signature.items()]
        attrs = {(fn.arg_names.index(name),): d for name, d in zip(spec.signature, divisible) if d is not None}
        source = ASTSource(fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=attrs)
        compiled = triton.compile(
            source, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        )
    except Exception as err:  # noqa: BLE001 - any compiler failure is the report's finding
        return {**row, "ok": False, "error": f"{type(err).__name__}: {str(err).strip()[:2000]}"}
    usage = _resource_usage(compiled.asm["cubin"])
    dynamic_shared = int(compiled.metadata.shared)
    return {
        **row,
        "ok": True,
        "registers": usage.get("reg"),
        # Register spills land in the stack frame (STACK) with this toolchain, local arrays in
        # LOCAL: either is per-thread memory traffic, so both count.
        "spill_bytes": None if "stack" not in usage else usage["stack"] + usage.get("local", 0),
        "stack_bytes": usage.get("stack"),
        "shared_bytes": dynamic_shared + usage.get("shared", 0),
        "shared_fits": dynamic_shared + usage.get("shared", 0) <= MAX_SHARED_BYTES.get(arch, MAX_SHARED_BYTES[80]),
    }


def compile_report(arch: int = 90, ops: Iterable[str] | None = None) -> list[dict]:
    """Compile every registered kernel for sm_<arch> (80 or 90); one dict per kernel config.

    Keys: op, kernel, arch, num_warps, num_stages, tuning_groups, ok, error (if not ok), registers,
    spill_bytes (stack frame + local memory), stack_bytes, shared_bytes, shared_fits. Works without a GPU. Under
    TRITON_INTERPRET=1 it runs in a child process, since interpreted kernels cannot be compiled.
    """
    if os.environ.get("TRITON_INTERPRET") == "1":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        code = "import json, sys; from glam_fast.kernels import compile_report; print(json.dumps(compile_report(int(sys.argv[1]), sys.argv[2:] or None)))"
        proc = subprocess.run([sys.executable, "-c", code, str(arch), *(ops or [])], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compile report failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    wanted = set(ops) if ops is not None else None
    return [compile_kernel(spec, arch) for spec in kernel_specs() if wanted is None or spec.op in wanted]


def format_report(rows: list[dict]) -> str:
    """A text table of :func:`compile_report` rows."""
    lines = [f"{'op':<20} {'kernel':<44} {'sm':>3} {'warps':>5} {'stages':>6} {'regs':>5} {'spill B':>7} {'smem B':>7}"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['op']:<20} {r['kernel']:<44} {r['arch']:>3} FAILED: {r['error'].splitlines()[0]}")
            continue
        lines.append(
            f"{r['op']:<20} {r['kernel']:<44} {r['arch']:>3} {r['num_warps']:>5} {r['num_stages']:>6} "
            f"{r['registers'] if r['registers'] is not None else '?':>5} {r['spill_bytes'] if r['spill_bytes'] is not None else '?':>7} {r['shared_bytes']:>7}"
        )
    return "\n".join(lines)
