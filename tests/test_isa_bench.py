"""The kernel timing tool (`smallmind bench --isa`, smallmind/isa_bench.py) and dispatch.c's
choice, per weight type and kernel-table entry, on the CPU the tests run on."""

import dataclasses

import numpy as np
import pytest

from smallmind import isa_bench, kernels
from tests.test_cli import run

# Closer calls than this are ties, where either unit is a right choice: the timing of one
# entry moves by a few percent from run to run on a machine shared with other work.
MARGIN = 0.10


def fastest_of_both(a: isa_bench.EntryTiming, b: isa_bench.EntryTiming) -> isa_bench.EntryTiming:
    """Each unit's fastest time per shape over two timings of one entry."""
    seconds = {u: {s: min(a.seconds[u][s], b.seconds[u][s]) for s in a.shapes} for u in a.seconds}
    return dataclasses.replace(a, seconds=seconds)


def test_automatic_table_runs_what_the_timing_tool_finds_faster():
    """The table dispatch chooses by itself (whatever SMALLMIND_ISA forces for the rest of
    the suite), per entry.  Where a unit is faster than the table's by more than MARGIN at
    every shape, the table must run it; where the table runs a unit other than the fallback
    (AVX2's on x86), it must not be slower than the fallback by more than MARGIN at any
    shape.  An entry that disagrees is timed once more with more rounds, each unit keeping its fastest
    time of both, so that one burst of load from another process cannot fail the test."""
    timings = isa_bench.measure()
    if len(isa_bench.candidate_units()) < 2:
        assert timings == []  # a scalar-only build: nothing to choose
        return
    assert {t.wtype for t in timings if t.entry == "dot"} == set(isa_bench.BLOCKS)
    wrong = {}
    for t in timings:
        if isa_bench.table_disagreement(t, MARGIN) is None:
            continue
        again = fastest_of_both(t, isa_bench.measure(types=[t.wtype], entries=(t.entry,), rounds=40)[0])
        why = isa_bench.table_disagreement(again, MARGIN)
        if why is not None:
            wrong[f"{t.wtype} {t.entry}"] = f"{why}\n{isa_bench.report([again], MARGIN)}"
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def timing(table: str, avx2: tuple[float, float], avx512: tuple[float, float]) -> isa_bench.EntryTiming:
    shapes = ["1 tok", "8 tok"]
    seconds = {"avx2": dict(zip(shapes, avx2)), "avx512": dict(zip(shapes, avx512))}
    return isa_bench.EntryTiming("Q4_0", "dot", shapes, seconds, table, "avx2")


def test_the_check_and_the_choice_on_given_timings():
    """The rules the test above applies, on figures where the answer is known."""
    clear_win = timing("avx2", avx2=(1.0, 8.0), avx512=(0.7, 5.0))
    assert isa_bench.faster_unit(clear_win) == "avx512"
    assert "avx512 is faster" in isa_bench.table_disagreement(clear_win, MARGIN)
    assert isa_bench.table_disagreement(dataclasses.replace(clear_win, table_unit="avx512"), MARGIN) is None
    # faster at 1 token, slower at 8: the fallback stays, taking avx512 is the error
    trade = timing("avx2", avx2=(1.0, 8.0), avx512=(0.7, 10.0))
    assert isa_bench.faster_unit(trade) == "avx2"
    assert isa_bench.table_disagreement(trade, MARGIN) is None
    assert "slower than avx2" in isa_bench.table_disagreement(
        dataclasses.replace(trade, table_unit="avx512"), MARGIN
    )
    # within the margin at one shape: a tie, either table is right
    tie = timing("avx2", avx2=(1.0, 8.0), avx512=(0.95, 5.0))
    assert isa_bench.faster_unit(tie) == "avx512"
    assert isa_bench.table_disagreement(tie, MARGIN) is None


@pytest.mark.parametrize("unit", isa_bench.candidate_units())
def test_every_unit_table_the_tool_times_keeps_the_batch_contract(unit):
    """The tables the tool compares (each unit's own entries) are ones dispatch may take:
    each must give, for every (weight row, token), the float of its vec_dot whatever the
    batch, like the default tables (tests/test_kernels.py)."""
    rng = np.random.default_rng(3)
    before = kernels.current_isa()
    try:
        kernels.select_isa(unit, unit_only=True)
        for wtype in isa_bench.BLOCKS:
            n_cols = 512 if isa_bench.BLOCKS[wtype][0] == 256 else 160
            raw = isa_bench.random_weights(wtype, 19, n_cols, rng)
            xq = kernels.quantize_activation(rng.standard_normal((9, n_cols), dtype=np.float32), wtype)
            reference = kernels.matmul_q(raw, wtype, n_cols, xq, vec_dot_only=True)
            for n_tok in range(1, 10):
                got = kernels.matmul_q(raw, wtype, n_cols, xq[:n_tok])
                np.testing.assert_array_equal(
                    got.view(np.uint32),
                    reference[:n_tok].view(np.uint32),
                    err_msg=f"{wtype} {n_tok} ({unit})",
                )
    finally:
        kernels.select_isa(before)


@pytest.mark.e2e  # runs `python -m smallmind`
def test_bench_isa_prints_a_line_per_entry_and_says_where_the_table_disagrees():
    r = run("bench", "--isa", "--rounds", "3")
    assert r.returncode in (0, 1), r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cpu: ") and f"automatic table: {isa_bench.automatic_isa()}" in lines[1]
    header = lines[2].split()
    assert header[-2:] == ["faster", "table"]
    units = isa_bench.candidate_units()
    assert [h for h in header if h in kernels.ISA_IDS] == units
    if len(units) > 1:
        for wtype in isa_bench.BLOCKS:
            # the last shape's line of each dot entry carries the verdict and the table's unit
            rows = [line.split() for line in lines if line.startswith(f"{wtype} ") and " dot " in line]
            verdict = [cell for cell in rows[-1] if cell != "!"]
            assert verdict[-2] in units and verdict[-1] in units, verdict
    # exit 1 exactly when an entry is flagged, with the reason on a line of its own
    assert (r.returncode == 1) == any(line.startswith("! ") for line in lines), r.stdout


@pytest.mark.e2e  # runs `python -m smallmind`
def test_info_names_the_unit_of_each_types_dot_kernels():
    r = run("info")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.startswith("dot kernels: "))
    shown = dict(item.split() for item in line.removeprefix("dot kernels: ").split(", "))
    # the CLI runs under this process's SMALLMIND_ISA, so on the same table
    assert shown == {t: kernels.entry_unit("dot", t) for t in kernels.TYPE_IDS}
    assert set(shown.values()) <= set(kernels.available_isas())


@pytest.mark.e2e  # runs `python -m smallmind`
def test_bench_needs_isa_and_a_positive_round_count():
    for args in (["bench"], ["bench", "--isa", "--rounds", "0"]):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) in (1, 2), r.stderr  # argparse adds its usage line
