"""The README's examples, run: a README example that stops being true fails CI.

Rules for README.md (this module enforces every one of them):

- Every ```python block runs somewhere. The line right before its fence is its tag,
  ``<!-- test: TAG -->``, naming the environment it runs in: ``core`` (no framework),
  ``torch``, ``gluon``, ``keras`` (every Keras environment, whatever its backend),
  ``keras-tensorflow``, ``keras-jax``, ``keras-torch``, ``flax`` (linen and NNX), or ``zoo``
  (Hugging Face's transformers and KerasHub beside torch and Flax). An
  untagged python block, or an unknown tag, is a failure; so is an environment with no block.
- Each block runs alone: a fresh namespace (a module of its own), a fresh temporary working
  directory, one pytest test per block, named after the line of its fence (``pytest
  tests/readme -k line123`` runs one). Tracebacks point at README.md's lines. The blocks of an
  environment share its process (an interpreter per block would pay each framework's import
  every time), so a block sets the global state it relies on itself: a seed, MXNet's
  ``npx.set_np()``; output that depends on random values comes from seeded code, or is not shown.
- A ```text block right after a python block (only blank lines between) is that block's
  expected stdout. Each line is compared with trailing whitespace stripped (and trailing blank
  lines dropped); a line that is just ``...`` matches any number of lines (none included), and
  ``...`` inside a line matches any text on that line. A python block without a text block
  states its claims with ``assert``.
- A ```console block is tagged like a python block and continues the nearest python block above
  it (same tag), in that block's temporary directory, after it has run: each ``$ `` line is run
  by the shell, with this environment's ``bin`` first on PATH (so ``unitree`` and ``python`` are
  this environment's), and must exit with status 0 (write ``|| echo "exit status $?"`` to show
  a failing status); the lines up to the next ``$ `` line are its expected output, stdout and
  stderr together, with the same ``...`` rules. UNITREE_CHECKPOINTS is unset there, so a
  ``unitree conformance`` in the README never writes into the nox sessions' shared folder.
- Console blocks are how the README shows the ``unitree`` command: real output, checked,
  without a python block that wraps ``subprocess``.
- A ```text block anywhere else is an unchecked claim, and a failure. ```bash blocks are never
  run: they may only install (``pip install``) or run nox, the commands that set all of this up.
  No other fence is allowed.

The environment comes from the variables nox sets (noxfile.py, ENVIRONMENTS): no UNITREE_BACKENDS is
``core``; ``torch``; ``gluon``; ``keras`` with KERAS_BACKEND=tensorflow|jax|torch is
``keras-<backend>``; ``flax-linen,flax-nnx`` is ``flax``; ``zoo`` (transformers, Flax, torch,
KerasHub on jax) is ``zoo``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
ENVIRONMENTS = (
    "core",
    "torch",
    "gluon",
    "keras-tensorflow",
    "keras-jax",
    "keras-torch",
    "flax",
    "zoo",
)
TAGS = {**{e: {e} for e in ENVIRONMENTS}, "keras": {e for e in ENVIRONMENTS if "keras" in e}}
FENCES = ("python", "console", "text", "bash")
TAG = re.compile(r"^<!-- test: (\S+) -->$")


@dataclass
class Block:
    lang: str
    line: int  # the fence's line, 1-based
    body: list[str]
    tag: str | None = None  # the tag comment right before the fence
    tag_line: str = ""  # the line right before the fence, verbatim
    output: Block | None = None  # python: the text block right after it
    consoles: list[Block] = field(default_factory=list)  # python: the console blocks after it
    owner: Block | None = None  # text or console: the python block it belongs to

    def __repr__(self) -> str:
        return f"<```{self.lang} block at README.md:{self.line}>"


def parse(text: str) -> list[Block]:
    """Every fenced block of ``text``, in order, with text and console blocks attached."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang = lines[i][3:].strip()
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"README.md:{i + 1}: a fence that is never closed")
        before = lines[i - 1].strip() if i else ""
        m = TAG.match(before)
        blocks.append(Block(lang, i + 1, lines[i + 1 : end], m and m[1], before))
        i = end + 1
    last_python: Block | None = None
    for prev, b in zip([None, *blocks], blocks):
        if b.lang == "python":
            last_python = b
        elif b.lang == "text" and prev is not None and prev.lang == "python":
            between = lines[prev.line + len(prev.body) + 1 : b.line - 1]
            if all(not s.strip() for s in between):
                prev.output, b.owner = b, prev
        elif b.lang == "console" and last_python is not None:
            last_python.consoles.append(b)
            b.owner = last_python
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))


def environment() -> str | None:
    """This environment's label (None if the variables name no known environment)."""
    raw = os.environ.get("UNITREE_BACKENDS", "").strip()
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if not names:
        return "core"
    if names in ({"torch"}, {"gluon"}, {"zoo"}):
        return names.pop()
    if names == {"keras"}:
        backend = os.environ.get("KERAS_BACKEND", "")
        return f"keras-{backend}" if f"keras-{backend}" in ENVIRONMENTS else None
    if names <= {"flax-linen", "flax-nnx"}:
        return "flax"
    return None


HERE = environment()
RUN = [b for b in BLOCKS if b.lang == "python" and b.tag in TAGS and HERE in TAGS[b.tag]]


# -- the checks of the README's form, in every environment --------------------------------------


def test_the_environment_is_known() -> None:
    assert HERE is not None, (
        f"UNITREE_BACKENDS={os.environ.get('UNITREE_BACKENDS')!r} with "
        f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r} names none of {ENVIRONMENTS}: "
        "run the README's blocks through nox, or set the variables as noxfile.py's ENVIRONMENTS do."
    )


def test_every_fence_is_a_known_kind() -> None:
    bad = [f"README.md:{b.line}: ```{b.lang}" for b in BLOCKS if b.lang not in FENCES]
    assert not bad, f"fences must be one of {FENCES}: {bad}"


def test_every_python_and_console_block_has_a_known_tag() -> None:
    bad = [
        f"README.md:{b.line}: ```{b.lang} after {b.tag_line!r}"
        for b in BLOCKS
        if b.lang in ("python", "console") and b.tag not in TAGS
    ]
    assert not bad, f"each needs <!-- test: TAG --> right before it, TAG in {sorted(TAGS)}: {bad}"


def test_tags_are_only_on_python_and_console_blocks() -> None:
    bad = [f"README.md:{b.line}" for b in BLOCKS if b.tag and b.lang not in ("python", "console")]
    assert not bad, f"a tag on a block that never runs: {bad}"


def test_every_environment_has_a_block() -> None:
    tags = {b.tag for b in BLOCKS if b.lang == "python"}
    empty = [e for e in ENVIRONMENTS if not any(e in TAGS.get(t, ()) for t in tags)]
    assert not empty, f"no README block runs in {empty}"


def test_every_text_block_is_an_output() -> None:
    bad = [f"README.md:{b.line}" for b in BLOCKS if b.lang == "text" and b.owner is None]
    assert not bad, f"a ```text block must follow a ```python block (blank lines only): {bad}"


def test_every_console_block_continues_a_python_block_of_its_tag() -> None:
    bad = [
        f"README.md:{b.line}"
        for b in BLOCKS
        if b.lang == "console" and (b.owner is None or b.owner.tag != b.tag)
    ]
    assert not bad, f"a ```console block needs a python block of its tag above it: {bad}"
    for b in BLOCKS:
        if b.lang == "console":
            assert b.body and b.body[0].startswith("$ "), f"README.md:{b.line}: starts with '$ '"


def test_bash_blocks_only_install_or_run_nox() -> None:
    allowed = re.compile(r"^(python3 -m pip install \S+ && )?(pip install|python3 -m (pip|nox))\b")
    bad = [
        f"README.md:{b.line + 1 + i}: {s}"
        for b in BLOCKS
        if b.lang == "bash"
        for i, s in enumerate(b.body)
        if s.strip() and not s.startswith("#") and not allowed.match(s)
    ]
    assert not bad, (
        f"```bash blocks are not run: anything but installs and nox is ```console: {bad}"
    )


# -- the blocks of this environment, run ----------------------------------------------------------


def matches(expected: list[str], actual: str) -> bool:
    """``actual`` against the expected lines: ``...`` alone on a line is any lines, inside a
    line any text; trailing whitespace and trailing blank lines do not count."""
    parts = []
    for line in _trimmed(expected):
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(re.escape(line).replace(r"\.\.\.", r"[^\n]*") + r"\n")
    text = "".join(s + "\n" for s in _trimmed(actual.splitlines()))
    return re.fullmatch("".join(parts), text) is not None


def _trimmed(lines: list[str]) -> list[str]:
    out = [s.rstrip() for s in lines]
    while out and not out[-1]:
        out.pop()
    return out


def _compare(where: str, expected: list[str], actual: str) -> None:
    if not matches(expected, actual):
        pytest.fail(
            f"{where}: the output is not the README's.\n--- README\n"
            + "\n".join(expected)
            + "\n--- actual\n"
            + actual,
            pytrace=False,
        )


def run_console(block: Block) -> None:
    """Each ``$ `` command of ``block`` in the shell, in the current directory."""
    env = {k: v for k, v in os.environ.items() if k != "UNITREE_CHECKPOINTS"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    commands: list[tuple[int, str, list[str]]] = []
    for i, line in enumerate(block.body):
        if line.startswith("$ "):
            commands.append((block.line + 1 + i, line[2:], []))
        else:
            commands[-1][2].append(line)
    for line, command, expected in commands:
        done = subprocess.run(
            command,
            shell=True,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        where = f"README.md:{line}: $ {command}"
        assert done.returncode == 0, f"{where}: exit status {done.returncode}\n{done.stdout}"
        _compare(where, expected, done.stdout)


@pytest.mark.parametrize("block", RUN, ids=[f"line{b.line}" for b in RUN])
def test_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"readme_line{block.line}"
    module = types.ModuleType(name)
    module.__file__ = str(README)
    # blank lines before the code: a traceback names README.md's own line numbers
    code = compile("\n" * block.line + "\n".join(block.body) + "\n", str(README), "exec")
    monkeypatch.setitem(sys.modules, name, module)
    out = io.StringIO()
    raised = ""
    try:
        with contextlib.redirect_stdout(out):
            exec(code, module.__dict__)
    except Exception as e:  # the README's frames only, and what the block printed
        raised = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
    if raised:
        pytest.fail(
            f"README.md:{block.line}: the block raised\n{raised}--- its output\n{out.getvalue()}",
            pytrace=False,
        )
    if block.output is not None:
        _compare(f"README.md:{block.line}", block.output.body, out.getvalue())
    for console in block.consoles:
        run_console(console)
