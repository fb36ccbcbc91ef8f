"""One session per backend environment; `nox` runs them all (docs/architecture.md, "Environments").

nox                     every test session, then the conformance matrix of all environments
nox -s conformance      the conformance cases on every environment, then the matrix
nox -s torch            one environment: its unit tests and the conformance suite
nox -s wheel            the built wheel alone: `unitree conformance` from the installed package
nox -s zoo              every Hugging Face architecture with a PyTorch and a Flax class, ported
                        both ways (and into KerasHub's twins); writes conformance/reports/zoo.md
nox -s bench            the performance ratios (benchmarks/)
nox -r ...              reuse the environments already installed

Each backend session also writes its column of the matrix to .nox/reports/parts/;
the `matrix` session draws them as one table. The environments share a folder of
checkpoints, so the save/load case loads what the environments before it wrote:
gluon (numpy 1.23) reads torch's, and keras and flax (numpy 2) read gluon's.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import nox

# Pinned: a CPU build of torch lies on this machine's disk (a looser pin pulls a CUDA build
# of several GB); the others so that a new release cannot turn CI red overnight.
TORCH = "torch==2.13.0"
KERAS = "keras==3.15.1"
KERAS_BACKENDS = {"tensorflow": "tensorflow-cpu==2.21.0", "jax": "jax==0.10.2", "torch": TORCH}
FLAX = ("flax==0.12.8", "jax==0.10.2")
GLUON = ("mxnet==1.9.1", "numpy<1.24")  # MXNet 1.9.1 imports only with numpy < 1.24
TESTING = ("pytest", "hypothesis==6.170.15")
# The last transformers with Flax models (5 drops them), and KerasHub, which builds the same
# architectures natively in Keras 3.
ZOO = ("transformers==4.57.6", "keras-hub==0.32.0")

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINTS = os.path.join(HERE, ".nox", "checkpoints")
PARTS = os.path.join(HERE, ".nox", "reports", "parts")


def _keras_env(backend: str) -> dict[str, str]:
    """Keras reads KERAS_BACKEND once, at import, and writes its config under KERAS_HOME."""
    home = os.path.join(HERE, ".nox", f"keras-home-{backend}")
    return {"KERAS_BACKEND": backend, "KERAS_HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}


class Environment(NamedTuple):
    doc: str  # the session's description (nox -l)
    tests: str  # its unit tests
    install: tuple[str, ...]  # what pip installs besides TESTING; the first one editable
    env: dict[str, str]  # what it tests (UNITREE_BACKENDS) and its frameworks' variables
    columns: tuple[str, ...]  # its matrix columns: the builders' labels


# One session per framework environment, in the order they run: the checkpoints each saves
# are loaded by those after it. Torch is in every environment and Keras in two more, so ports
# run in one process wherever frameworks can share one: Keras on torch beside Gluon (numpy
# 1.23), Keras on jax beside Flax.
ENVIRONMENTS = {
    "torch": Environment(
        "The torch adapter's tests, and the conformance suite on torch.",
        "tests/torch",
        (".[torch]", TORCH),
        {"UNITREE_BACKENDS": "torch"},
        ("torch",),
    ),
    "gluon": Environment(
        "MXNet Gluon 1.9.1 in its own environment: it imports only with numpy < 1.24.",
        "tests/gluon",
        (".", *GLUON, TORCH, KERAS, "rich"),
        {"UNITREE_BACKENDS": "gluon", **_keras_env("torch")},
        ("gluon",),
    ),
    **{
        f"keras-{b}": Environment(
            f"Keras 3 on {b}: KERAS_BACKEND is read once, at import.",
            "tests/keras",
            (".", KERAS, package, TORCH),
            {"UNITREE_BACKENDS": "keras", **_keras_env(b)},
            (f"keras-{b}",),
        )
        for b, package in KERAS_BACKENDS.items()
    },
    "flax": Environment(
        "Flax linen and NNX on jax.",
        "tests/flax",
        (".", *FLAX, TORCH, KERAS),
        {"UNITREE_BACKENDS": "flax-linen,flax-nnx", **_keras_env("jax")},
        ("flax-linen", "flax-nnx"),
    ),
}

nox.options.sessions = ["lint", "core", "wheel", *ENVIRONMENTS, "matrix", "zoo"]


def _suite(session: nox.Session, tests: str) -> None:
    """This environment's unit tests and the conformance suite, which writes its matrix column.

    ``posargs`` go to pytest: options are added to this environment's test paths
    (``nox -s torch -- -k tie``), paths replace them (``nox -s torch -- tests/conformance``);
    ``bench`` runs this environment's benchmarks instead.
    """
    env = {"UNITREE_CHECKPOINTS": CHECKPOINTS, **ENVIRONMENTS[session.name].env}
    if session.posargs[:1] == ["bench"]:
        backend = session.name.partition("-")[0]
        session.run("python", "benchmarks/run.py", backend, *session.posargs[1:], env=env)
        return
    part = os.path.join(PARTS, f"{session.name}.json")
    if os.path.exists(part):
        os.remove(part)  # a column from an earlier run must never stand in for this one
    args = session.posargs
    whole = not args or args == ["tests/conformance"]  # the whole deck: pytest writes the column
    if not (args and os.path.exists(args[0])):  # no paths given: this environment's tests
        args = [tests, "tests/safety", "tests/conformance", "tests/readme", *args]
    # a failing cell fails pytest, which fails the session: no session hides a failing column
    session.run("pytest", *args, env={**env, "UNITREE_REPORT": part} if whole else env)
    if not whole:  # pytest ran part of the deck (-k, other paths): the column needs all of it
        session.run("unitree", "conformance", "--report", part, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release may add rules and turn CI red
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def core(session: nox.Session) -> None:
    """The core alone: numpy and safetensors (and the optional rich), no framework installed."""
    session.install("-e", ".", *TESTING, "rich")
    session.run("pytest", "tests/core", "tests/readme", *session.posargs)


_NO_FRAMEWORK = (
    "import sys\n"
    "for name in ('torch', 'keras', 'tensorflow', 'jax', 'flax', 'mxnet'):\n"
    "    sys.modules[name] = None  # as if not installed\n"
    "from unitree._cli import main\n"
    "sys.exit(main(['conformance']))"
)


@nox.session
def wheel(session: nox.Session) -> None:
    """The built wheel in a fresh environment with torch, run from outside the checkout:
    ``unitree conformance`` and ``python -m unitree conformance`` use the shipped suite."""
    dist = os.path.abspath(os.path.join(session.create_tmp(), "dist"))
    if os.path.isdir(dist):
        for name in os.listdir(dist):
            os.remove(os.path.join(dist, name))
    session.install("pip")
    session.run("pip", "wheel", "--no-deps", "--quiet", "-w", dist, HERE)
    (built,) = (os.path.join(dist, n) for n in os.listdir(dist) if n.endswith(".whl"))
    session.install(f"{built}[torch]", TORCH)
    session.install("--force-reinstall", "--no-deps", built)  # this build, over an older 0.1.0
    work = os.path.abspath(os.path.join(session.create_tmp(), "run"))
    os.makedirs(work, exist_ok=True)
    session.chdir(work)  # no source checkout here: only the installed package can answer
    env = {"UNITREE_CHECKPOINTS": os.path.join(work, "checkpoints"), "UNITREE_BACKENDS": ""}
    session.run(
        "python",
        "-c",
        "import unitree.conformance as c, sys; sys.exit('site-packages' not in c.__file__)",
    )
    # with no framework importable it says what to install (exit status 2) and runs nothing
    session.run("python", "-c", _NO_FRAMEWORK, env=env, success_codes=[2])
    session.run("unitree", "conformance", "--report", "matrix.md", env=env)
    session.run(
        "python", "-m", "unitree", "conformance", "--backend", "torch", "--device", "cpu", env=env
    )


def _environment(name: str, e: Environment) -> None:
    def run(session: nox.Session) -> None:
        session.install("-e", *e.install, *TESTING)
        if name == "gluon" and not session.posargs:  # the only numpy-1 environment: the core
            session.run("pytest", "tests/core")  # must pass here too
        _suite(session, e.tests)

    run.__doc__ = e.doc
    nox.session(name=name)(run)


for _name, _e in ENVIRONMENTS.items():
    _environment(_name, _e)


@nox.session
def matrix(session: nox.Session) -> None:
    """One table from the columns the backend sessions wrote: case x backend x device."""
    missing = [n for n in ENVIRONMENTS if not os.path.exists(os.path.join(PARTS, f"{n}.json"))]
    if missing:
        session.error(
            f"No matrix column from {missing}: run those sessions (they failed or did not run)."
        )
    _crossed_numpy_boundary(session)
    _load_every_port_file(session)
    session.install("-e", ".")
    report = os.path.join(HERE, ".nox", "reports", "conformance.md")
    session.run("unitree", "conformance", "--merge", PARTS, "--report", report)


def _load_every_port_file(session: nox.Session) -> None:
    """The file twin of the port matrix: now that every environment has saved its port model,
    each loads every one (the environment sessions could only load those saved before them)."""
    for name in ENVIRONMENTS:
        unitree = os.path.join(HERE, ".nox", name, "bin", "unitree")
        part = os.path.join(PARTS, f"files-{name}.json")
        env = {"UNITREE_CHECKPOINTS": CHECKPOINTS, **ENVIRONMENTS[name].env}
        session.run(
            unitree,
            "conformance",
            "--files",
            "--report",
            part,
            env=env,
            external=True,
            success_codes=[0, 1],  # a failing cell is drawn in the matrix, which then fails
        )


def _crossed_numpy_boundary(session: nox.Session) -> None:
    """Gluon (numpy 1.23) loaded torch's checkpoint, and every numpy-2 environment after it
    loaded Gluon's: the save/load case's records in the shared folder say so."""

    def loaded_by(label: str) -> list[str]:
        path = os.path.join(CHECKPOINTS, f"loaded-by-{label}-cpu.json")
        return json.loads(open(path).read()) if os.path.exists(path) else []

    names = list(ENVIRONMENTS)
    later = [c for n in names[names.index("gluon") + 1 :] for c in ENVIRONMENTS[n].columns]
    missing = [
        f"{label} did not load {source}'s checkpoint"
        for label, source in [("gluon", "torch"), *((x, "gluon") for x in later)]
        if f"deck-mlp-{source}-cpu.safetensors" not in loaded_by(label)
    ]
    if missing:
        session.error(
            "Checkpoints did not cross the numpy 1 / numpy 2 boundary: " + "; ".join(missing)
        )


@nox.session
def zoo(session: nox.Session) -> None:
    """Real models: every architecture the installed transformers ships with both a PyTorch
    and a Flax class (found from its own auto mappings), ported both ways with the defaults and
    checked against the models' own outputs; Hugging Face torch models ported into their
    KerasHub twins; files read and written by both. ``bench`` runs benchmarks/bench_zoo.py."""
    session.install("-e", ".", *FLAX, TORCH, KERAS, *ZOO, *TESTING)
    env = {**_keras_env("jax"), "UNITREE_BACKENDS": "zoo"}  # tests/readme's environment
    if session.posargs[:1] == ["bench"]:
        session.run("python", "benchmarks/bench_zoo.py", *session.posargs[1:], env=env)
        return
    report = os.path.join(HERE, "conformance", "reports", "zoo.md")
    paths = ["tests/zoo", "tests/readme"]
    session.run("pytest", *paths, *session.posargs, env={**env, "UNITREE_ZOO_REPORT": report})


@nox.session(venv_backend="none")
def conformance(session: nox.Session) -> None:
    """The conformance suite alone on every environment, then the matrix."""
    for name in ENVIRONMENTS:
        session.notify(name, posargs=["tests/conformance"])
    session.notify("matrix")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The performance ratios, each measured in its framework's environment (nox -s bench)."""
    for name in ENVIRONMENTS:
        session.notify(name, posargs=["bench", *session.posargs])
    session.notify("zoo", posargs=["bench", *session.posargs])  # BERT-base against transformers
