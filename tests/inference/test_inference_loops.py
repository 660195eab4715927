"""The repetition-loop classifier of runaway replies (``harness.inference.generate.is_repetition_loop``):
a reply holding some n-gram ``repeats`` times is a loop, one without any repeated n-gram is not."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessError
from harness.inference.generate import is_repetition_loop

tokens = st.lists(st.integers(0, 50), max_size=30)


@settings(max_examples=200, deadline=None)
@given(prefix=tokens, gram=st.lists(st.integers(0, 50), min_size=1, max_size=8), times=st.integers(3, 6),
       suffix=tokens)
@example(prefix=[], gram=[7, 8, 9, 10, 11, 12], times=3, suffix=[])  # exactly 3 back-to-back 6-grams
@example(prefix=[1, 2], gram=[5], times=3, suffix=[3])  # a 1-token gram (n=1) three times
def test_a_gram_repeated_enough_times_is_a_loop(prefix, gram, times, suffix):
    seq = prefix + gram * times + suffix
    assert is_repetition_loop(seq, n=len(gram), repeats=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), unique=True, max_size=60), st.integers(1, 8))
@example([], 6)  # empty reply
@example([1, 2, 3, 4, 5], 6)  # shorter than one n-gram
def test_a_reply_without_repeated_tokens_is_no_loop(seq, n):
    assert not is_repetition_loop(seq, n=n, repeats=2)


@pytest.mark.parametrize("seq, n, repeats, want", [
    ([0] * 8, 6, 3, True),  # overlapping occurrences count: 8 equal tokens hold the 6-gram 3 times
    ([0] * 7, 6, 3, False),  # ... 7 hold it twice
    (list(range(6)) * 2 + [99], 6, 3, False),  # twice is not 3 times
    (list(range(6)) * 2 + [99] + list(range(6)), 6, 3, True),  # non-adjacent occurrences count
    (list(range(6)) * 3, 7, 3, False),  # a period of 6 holds no 7-gram 3 times (only twice)
])
def test_edges(seq, n, repeats, want):
    assert is_repetition_loop(seq, n, repeats) is want


def test_bad_settings_name_the_problem():
    with pytest.raises(HarnessError, match="n >= 1 and repeats >= 2"):
        is_repetition_loop([1, 2], n=0)
