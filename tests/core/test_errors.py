"""Every error class is exported, derives from UnitreeError and a builtin, and has its row in
the README's table of errors (when it is raised, what to do)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import unitree as ut

ERRORS = [getattr(ut, n) for n in ut.__all__ if n.endswith("Error") and n != "UnitreeError"]
README = (Path(__file__).parents[2] / "README.md").read_text()
ROWS = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", README, re.MULTILINE)}


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_is_a_unitree_error_and_a_builtin(error: type) -> None:
    assert issubclass(error, ut.UnitreeError)
    builtins = [b for b in error.__mro__[1:] if b.__module__ == "builtins" and b is not object]
    assert builtins and builtins[0] is not Exception, error


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_has_its_row_in_the_readme(error: type) -> None:
    assert error.__name__ in ROWS, f"README's table of errors has no row for {error.__name__}"
    direct = [b.__name__ for b in error.__bases__ if b is not ut.UnitreeError]
    assert re.findall(r"`(\w+)`", ROWS[error.__name__]) == direct


def test_the_table_lists_no_other_error() -> None:
    assert set(ROWS) == {e.__name__ for e in ERRORS}
