"""Property-based tests (hypothesis) of preprocess's split sizes: totals preserved, each split
within half an image of its share (ties rounded up), and every produced split holding at least
one image of a class that has enough images."""
from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
pre = load_script("imgpipe_steps_preprocess", "steps/preprocess.py")

FAST = settings(max_examples=300, deadline=500)
ratios = st.integers(0, 45).map(lambda percent: percent / 100)
pools = st.sampled_from([("train", "valid", "test"), ("train", "valid"), ("train", "test"), ("train",)])


@FAST
@given(n=st.integers(1, 500), pool=pools, valid=ratios, test=ratios)
def test_split_sizes(n, pool, valid, test):
    targets = pre.split_targets(n, pool, valid, test)
    assert set(targets) == set(pool)
    assert all(count >= 0 for count in targets.values())
    shares = {"valid": valid, "test": test}
    carved = [s for s in ("valid", "test") if s in pool and shares[s] > 0]
    if n >= len(carved) + 1 and n * (1 - valid - test) >= 2:
        assert sum(targets.values()) == n  # nothing lost, nothing invented
        assert all(targets[s] >= 1 for s in ("train", *carved))
    for split in carved:
        exact = n * shares[split]
        if exact >= 0.5:  # round half up: within half an image, a tie goes up
            assert exact - 0.5 - 1e-6 < targets[split] <= exact + 0.5 + 1e-6
        else:
            assert targets[split] == 1  # a ratio > 0 always gets one image
    for split in ("valid", "test"):
        if split in pool and shares[split] == 0:
            assert targets[split] == 0


@FAST
@given(whole=st.integers(0, 10**6), fraction=st.sampled_from([0.0, 0.25, 0.4999, 0.5, 0.5001, 0.75]))
def test_round_half_up(whole, fraction):
    expected = whole + (1 if fraction >= 0.5 else 0)
    assert pre.round_half_up(whole + fraction) == expected
