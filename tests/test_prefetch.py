"""Batches made one step ahead (models/prefetch.py): same items, same generator state, errors
at their item, and nothing made after the caller stops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_cellsparse.models.prefetch import prefetched


def draws(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=3)


def test_items_and_generator_state_match_a_plain_loop() -> None:
    plain = np.random.default_rng(7)
    expected = [draws(plain) for _ in range(25)]
    ahead = np.random.default_rng(7)
    got = list(prefetched(lambda: draws(ahead), 25))
    assert len(got) == 25
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    # exactly 25 draws: a seeded training goes on (or ends) in the same state
    assert np.array_equal(ahead.normal(size=3), plain.normal(size=3))


def test_an_error_reaches_the_caller_at_its_item() -> None:
    made = []

    def make() -> int:
        if len(made) == 3:
            raise ValueError("the fourth batch is bad")
        made.append(len(made))
        return made[-1]

    got = []
    with pytest.raises(ValueError, match="fourth batch"):
        for item in prefetched(make, 10):
            got.append(item)
    assert got == [0, 1, 2]


def test_stopping_early_waits_for_the_item_being_made_and_makes_no_more() -> None:
    started, calls = threading.Event(), []

    def make() -> int:
        calls.append(1)
        started.set()
        time.sleep(0.05)  # slower than the caller: the thread is inside make() at close
        return len(calls)

    items = prefetched(make, 100, ahead=2)
    assert next(items) == 1
    started.wait(1.0)
    items.close()  # the caller stops (cancel, a new annotation, an error)
    made = len(calls)
    time.sleep(0.2)
    assert len(calls) == made <= 4  # the one taken, at most two waiting and one in hand
    assert not any(t.name == "cellsparse-prefetch" for t in threading.enumerate())


def test_no_items_asked_makes_none() -> None:
    assert list(prefetched(lambda: pytest.fail("made"), 0)) == []
