"""One session per backend environment; `nox` runs them all (DESIGN §8).

nox -s conformance      the conformance matrix (case x backend x device)
nox                     every test session: lint, core, torch, conformance
nox -s bench            the performance ratios of DESIGN §7
nox -r ...              reuse the environments already installed
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "core", "torch", "conformance"]

# A CPU build on this machine's disk; a looser pin pulls a CUDA build of several GB.
TORCH = "torch==2.13.0"
HERE = os.path.dirname(os.path.abspath(__file__))
# Checkpoints one environment writes and the next reads (the cross-backend save/load case).
CHECKPOINTS = os.path.join(HERE, ".nox", "checkpoints")
REPORTS = os.path.join(HERE, ".nox", "reports")


def _env(backends: str) -> dict[str, str]:
    return {"UNITREE_BACKENDS": backends, "UNITREE_CHECKPOINTS": CHECKPOINTS}


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release may add rules and turn CI red
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def core(session: nox.Session) -> None:
    """The core alone: numpy and safetensors (and the optional rich), no framework installed."""
    session.install("-e", ".", "pytest", "rich")
    session.run("pytest", "tests/core", *session.posargs)


@nox.session
def torch(session: nox.Session) -> None:
    """Unit tests of the torch adapter, and the conformance suite on torch."""
    session.install("-e", ".[torch]", TORCH, "pytest", "ml_dtypes")
    session.run("pytest", "tests/torch", "conformance", *session.posargs, env=_env("torch"))


@nox.session
def conformance(session: nox.Session) -> None:
    """Print the matrix: every deck case on every backend of this environment and every device."""
    session.install("-e", ".[torch]", TORCH)
    report = os.path.join(REPORTS, "conformance.md")
    session.run("unitree", "conformance", "--report", report, *session.posargs, env=_env("torch"))


@nox.session
def bench(session: nox.Session) -> None:
    """The ratios of DESIGN §7, measured side by side with the framework's own operation."""
    session.install("-e", ".[torch]", TORCH)
    session.run("python", "benchmarks/run.py", *session.posargs)
