"""fraqat.schedule: every schedule ends at the target; FraQAT's level order and stage lengths."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraqat.models.rectified_flow import cosine_lr
from fraqat.schedule import (
    LR_SHAPES,
    SCHEDULES,
    SHAPES,
    bit_levels,
    first_target_step,
    make_lr_schedule,
    make_schedule,
    stage_boundaries,
    steps_at_target,
)


def trace(s, total: int) -> list[float | None]:
    return [s.bits_at(i) for i in range(total)]


def runs(values: list) -> list[tuple[object, int]]:
    """Consecutive (value, length) runs."""
    out: list[tuple[object, int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def non_increasing(values: list[float | None]) -> bool:
    v = [math.inf if b is None else b for b in values]
    return all(a >= b for a, b in pairwise(v))


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("target", [4, 3, 2, 4.5])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("total", [1, 2, 5, 17, 1000])
def test_last_step_is_target(name: str, target: float, shape: str, total: int) -> None:
    for kw in ({}, {"fp_warmup": 0.3}, {"final_fraction": 0.4}, {"final_fraction": 1.0}):
        s = make_schedule(name, target, total, shape=shape, **kw)
        assert s.bits_at(total - 1) == target, kw


@given(name=st.sampled_from(SCHEDULES), target=st.floats(2, 8), total=st.integers(1, 300),
       start_gap=st.floats(0, 6), step=st.floats(0.1, 2), shape=st.sampled_from(SHAPES),
       fp_warmup=st.floats(0, 0.99),
       final_fraction=st.one_of(st.none(), st.floats(0.01, 1.0)))
@settings(max_examples=100, deadline=None)
def test_schedule_properties(name: str, target: float, total: int, start_gap: float,
                             step: float, shape: str, fp_warmup: float,
                             final_fraction: float | None) -> None:
    start = min(16.0, target + start_gap)
    s = make_schedule(name, target, total, start=start, step=step, shape=shape,
                      fp_warmup=fp_warmup, final_fraction=final_fraction)
    bits = trace(s, total)
    assert bits[-1] == target
    assert non_increasing(bits)
    top = math.ceil(start) if name == "int-progressive" else start
    assert all(b is None or target <= b <= top + 1e-6 for b in bits)  # levels: 6 decimals


def test_fraqat_default_levels() -> None:
    s = make_schedule("fraqat", 4, 900)
    bits = trace(s, 900)
    assert [v for v, _ in runs(bits)] == [8, 7.5, 7, 6.5, 6, 5.5, 5, 4.5, 4]
    assert [n for _, n in runs(bits)] == [100] * 9
    assert non_increasing(bits)
    assert bit_levels(8, 4, 0.5) == [8, 7.5, 7, 6.5, 6, 5.5, 5, 4.5, 4]
    assert bit_levels(8, 4.2, 0.5)[-2:] == [4.5, 4.2]  # the target is never overshot


def test_int_progressive_integers_only() -> None:
    bits = trace(make_schedule("int-progressive", 4, 500, start=7.5), 500)
    assert [v for v, _ in runs(bits)] == [8, 7, 6, 5, 4]
    assert all(float(b).is_integer() for b in bits)
    frac = trace(make_schedule("int-progressive", 4.5, 500), 500)
    assert [v for v, _ in runs(frac)] == [8, 7, 6, 5, 4.5]


def test_constant() -> None:
    s = make_schedule("constant", 4, 100)
    assert s.bits_at(0) == 4 and set(trace(s, 100)) == {4}


def test_fp_warmup() -> None:
    bits = trace(make_schedule("fraqat", 4, 100, fp_warmup=0.1), 100)
    assert bits[:10] == [None] * 10 and bits[10] == 8
    cont = trace(make_schedule("continuous", 4, 100, fp_warmup=0.25), 100)
    assert cont[:25] == [None] * 25 and cont[25] == 8
    # the warm-up never eats the last step (the target is always reached)
    for name in SCHEDULES:
        assert make_schedule(name, 4, 1, fp_warmup=0.9).bits_at(0) == 4
        assert trace(make_schedule(name, 4, 2, fp_warmup=0.75), 2)[-1] == 4


@pytest.mark.parametrize("name", ["fraqat", "int-progressive", "continuous"])
def test_final_fraction(name: str) -> None:
    bits = trace(make_schedule(name, 4, 1000, final_fraction=0.4), 1000)
    assert abs(bits.count(4.0) - 400) <= 2
    assert bits[-400:] == [4.0] * 400


@pytest.mark.parametrize(("name", "kw", "expected"), [
    ("constant", {}, 400),
    ("fraqat", {}, 44),                        # 9 equal stages of 400 steps: 45,45,45,45,44,...
    ("fraqat", {"final_fraction": 0.7}, 280),
    ("continuous", {"final_fraction": 0.5}, 201),  # the held half + the last decay step
    ("fraqat", {"fp_warmup": 0.5, "final_fraction": 0.5}, 100),
])
def test_steps_at_target(name: str, kw: dict, expected: int) -> None:
    s = make_schedule(name, 4, 400, **kw)
    assert steps_at_target(s) == expected == trace(s, 400).count(4.0)


def test_continuous_decays_monotonically() -> None:
    bits = trace(make_schedule("continuous", 4, 101), 101)
    assert bits[0] == 8 and bits[-1] == 4
    assert all(a > b for a, b in pairwise(bits))  # strictly, one step per level of b
    held = trace(make_schedule("continuous", 3, 200, final_fraction=0.5), 200)
    assert all(a > b for a, b in pairwise(held[:100]))
    assert set(held[99:]) == {3.0}


def test_linear_shape_stage_lengths_increase() -> None:
    lengths = [n for _, n in runs(trace(make_schedule("fraqat", 4, 900, shape="linear"), 900))]
    assert len(lengths) == 9 and sum(lengths) == 900
    assert all(a < b for a, b in pairwise(lengths))
    assert lengths == [20 * (i + 1) for i in range(9)]
    upper = [n for _, n in runs(trace(make_schedule("fraqat", 4, 1000, shape="linear",
                                                    final_fraction=0.4), 1000))]
    assert upper[-1] == 400 and all(a < b for a, b in pairwise(upper[:-1]))


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"start": 3.0}, "start_bits=3.0"),
    ({"step": 0}, "step=0"),
    ({"step": -0.5}, "step=-0.5"),
    ({"step": float("nan")}, "step=nan"),
    ({"shape": "zigzag"}, "shape='zigzag'"),
    ({"fp_warmup": 1.0}, "fp_warmup=1.0"),
    ({"fp_warmup": -0.1}, "fp_warmup=-0.1"),
    ({"final_fraction": 0.0}, "final_fraction=0.0"),
    ({"final_fraction": 1.5}, "final_fraction=1.5"),
    ({"start": 1}, "start_bits=1"),
])
def test_bad_schedule_params(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        make_schedule("fraqat", 4, 100, **kwargs)


@pytest.mark.parametrize(("args", "needle"), [
    (("zigzag", 4, 100), "schedule='zigzag'"),
    (("fraqat", 4, 0), "total_steps=0"),
    (("fraqat", 4, 2.5), "total_steps=2.5"),
    (("constant", 4, True), "total_steps=True"),
    (("fraqat", 1, 100), "bits=1"),
    (("constant", float("nan"), 100), "bits=nan"),
    (("continuous", "4", 100), "bits='4'"),
])
def test_bad_schedule_args(args: tuple, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        make_schedule(*args)


def lrs(shape: str, bits, **kw) -> list[float]:
    lr = make_lr_schedule(shape, 1e-3, bits, **kw)
    return [lr.lr_at(k) for k in range(bits.total_steps)]


@given(shape=st.sampled_from(LR_SHAPES), name=st.sampled_from(SCHEDULES),
       total=st.integers(1, 300), warmup=st.integers(0, 50),
       final_fraction=st.one_of(st.none(), st.floats(0.05, 1.0)))
@settings(max_examples=100, deadline=None)
def test_lr_properties(shape: str, name: str, total: int, warmup: int,
                       final_fraction: float | None) -> None:
    bits = make_schedule(name, 4, total, final_fraction=final_fraction)
    values = lrs(shape, bits, warmup=warmup)
    assert all(0 < v <= 1e-3 * (1 + 1e-12) for v in values)
    assert values[:warmup] == [1e-3 * (k + 1) / warmup for k in range(min(warmup, total))]
    if shape == "constant":
        assert set(values[warmup:]) <= {1e-3}
    # offset: the run sees the schedule from step `offset` on
    o = total // 3
    shifted = make_lr_schedule(shape, 1e-3, bits, warmup=warmup, offset=o)
    assert [shifted.lr_at(k) for k in range(total - o)] == values[o:]


def test_cosine_is_the_old_formula() -> None:
    bits = make_schedule("fraqat", 4, 400)
    assert lrs("cosine", bits, warmup=30) == [cosine_lr(k, 400, 1e-3, 30) for k in range(400)]


def test_cosine_per_stage_restarts_at_every_level() -> None:
    bits = make_schedule("fraqat", 4, 900)
    values = lrs("cosine-per-stage", bits)
    starts = stage_boundaries(bits)
    assert starts == tuple(range(0, 900, 100))
    assert all(values[b] == 1e-3 for b in starts)
    assert all(values[k] > values[k + 1] for k in range(899) if k + 1 not in starts)


@pytest.mark.parametrize("final_fraction", [None, 0.7])
def test_restart_gives_the_target_stage_a_full_cosine(final_fraction: float | None) -> None:
    bits = make_schedule("fraqat", 4, 400, final_fraction=final_fraction)
    first = first_target_step(bits)
    n = steps_at_target(bits)
    assert first == 400 - n
    values = lrs("restart", bits)
    qat = lrs("cosine", make_schedule("constant", 4, n))
    assert values[first:] == pytest.approx(qat, rel=1e-12)  # = a QAT run of the target's length
    assert values[0] == values[first] == 1e-3
    # under one cosine the target stage only gets the tail (the confound in the science notes)
    tail = lrs("cosine", bits)[first:]
    assert max(tail) < 0.5e-3 if final_fraction is None else max(tail) > 0.5e-3


def test_lr_of_constant_bits_has_no_stages() -> None:
    bits = make_schedule("constant", 4, 100)
    assert first_target_step(bits) == 0 and stage_boundaries(bits) == (0,)
    assert lrs("restart", bits) == lrs("cosine", bits) == lrs("cosine-per-stage", bits)


@pytest.mark.parametrize(("args", "kw", "needle"), [
    (("zigzag", 1e-3), {}, "lr_schedule='zigzag'"),
    (("cosine", 0.0), {}, "lr=0.0"),
    (("cosine", float("nan")), {}, "lr=nan"),
    (("cosine", 1e-3), {"warmup": -1}, "warmup_steps=-1"),
    (("cosine", 1e-3), {"offset": 1.5}, "offset=1.5"),
])
def test_bad_lr_params(args: tuple, kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        make_lr_schedule(*args, make_schedule("constant", 4, 10), **kw)
