"""The zoo's table: each pair's measured differences and port times, printed at the end of
the run and written to ``UNITREE_ZOO_REPORT`` (markdown) when that is set."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

_RESULTS: list[dict] = []


@pytest.fixture
def zoo_results() -> list[dict]:
    return _RESULTS


def _table() -> str:
    import transformers

    lines = [
        f"# The Hugging Face zoo: transformers {transformers.__version__}",
        "",
        "Every architecture the installed transformers ships with both a PyTorch and a Flax "
        "class, ported by `ut.port(src, dst)` with the defaults, every source value "
        "randomized, outputs compared through the models' own forward functions (float32, "
        "largest absolute difference over every output). `transformers`: the same torch "
        "values through transformers' own converter: where it differs beyond 1e-4, the two "
        "classes compute different things, and the pair is not counted as unitree's. Times "
        "in ms, unitree / transformers' converter, on tiny models (the BERT-base figures "
        "are in benchmarks/bench_zoo.py).",
        "",
        "| pair | transformers | torch -> flax | flax -> torch | ties kept | t2f ms (ours/theirs) | f2t ms (ours/theirs) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in _RESULTS:
        note = ""
        if r["transformers"] > 1e-4:
            note = "transformers' own classes disagree: listed, not counted"
        if r["refused"]:
            note += f"; refused by default (strict): {r['refused']}"
        if r["t2f"] is None:
            lines.append(
                f"| {r['pair']} | {r['transformers']:.1e} | refused | refused | | | | {note} |"
            )
            continue
        ours_t2f, theirs_t2f, ours_f2t, theirs_f2t = (1000 * t for t in r["times"])
        lines.append(
            f"| {r['pair']} | {r['transformers']:.1e} | {r['t2f']:.1e} | {r['f2t']:.1e} | "
            f"{r['ties']} | {ours_t2f:.0f} / {theirs_t2f:.0f} | {ours_f2t:.0f} / {theirs_f2t:.0f} | {note} |"
        )
    counted = [r for r in _RESULTS if r["transformers"] <= 1e-4]
    matched = [r for r in counted if not r["refused"] and max(r["t2f"], r["f2t"]) <= 1e-4]
    refused = [r["pair"] for r in counted if r["refused"]]
    lines += [
        "",
        f"{len(_RESULTS)} pairs found; {len(counted)} where transformers' classes agree; "
        f"{len(matched)} of those match both ways under the defaults; refused by default: "
        f"{', '.join(refused) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RESULTS:
        return
    table = _table()
    terminalreporter.write_line(table)
    out = os.environ.get("UNITREE_ZOO_REPORT")
    if out:
        with open(out, "w") as f:
            f.write(table)
