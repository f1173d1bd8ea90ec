"""Helpers shared by the tests: comparisons, child-process environments."""

import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖, computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def child_env(*drop: str) -> dict[str, str]:
    """The environment for a Python child process that imports this checkout.

    The checkout goes first on PYTHONPATH, ahead of (not instead of) what the parent had there:
    packages installed into a folder on PYTHONPATH stay importable. PYTEST_ADDOPTS is dropped
    because options meant for the outer run (`-n 8` switches pytest-benchmark off) would change
    a child pytest, and so are pytest-xdist's worker variables: pytest-benchmark switches itself off
    in any process that has PYTEST_XDIST_WORKER. `drop` names further variables to leave out.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS" and not k.startswith("PYTEST_XDIST_") and k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return env
