"""The row map: which rows of the shared batch are whose, through candidates, drops and joins."""
import pytest

from safety_demo.decoding.rows import RowMap


@pytest.fixture
def rows():
    r = RowMap()
    r.add("vanilla", 1)
    r.add("safecode", 2)  # real + noised
    r.add("safesteer", 1)
    return r


def test_lanes_lie_one_after_another(rows):
    assert len(rows) == 4 and rows.names == ["vanilla", "safecode", "safesteer"]
    assert (rows.block("vanilla"), rows.block("safecode"), rows.block("safesteer")) == (range(0, 1), range(1, 3), range(3, 4))


def test_candidates_repeat_one_row_then_the_chosen_one_stays(rows):
    index = rows.regroup({"vanilla": [0], "safecode": [0, 1], "safesteer": [0] * 5})  # k = 5 candidates on SafeSteer's row
    assert index == [0, 1, 2, 3, 3, 3, 3, 3] and len(rows) == 8
    assert rows.block("safesteer") == range(3, 8)
    kept = rows.regroup({"vanilla": [0], "safecode": [0], "safesteer": [3]})  # SafeCoDe drops its noised row; candidate 3 wins
    assert kept == [0, 1, 6] and rows.block("safesteer") == range(2, 3)


def test_a_lane_without_picks_leaves_and_the_rest_close_up(rows):
    assert rows.regroup({"vanilla": [0], "safesteer": [0]}) == [0, 3]
    assert rows.names == ["vanilla", "safesteer"] and rows.block("safesteer") == range(1, 2)
    assert "safecode" not in rows


def test_a_lane_joins_at_the_end(rows):
    rows.regroup({"vanilla": [0]})
    assert rows.add("late", 2) == range(1, 3)
    assert rows.regroup({"vanilla": [0], "late": [1]}) == [0, 2]


@pytest.mark.parametrize("bad", [{"vanilla": [1]}, {"safecode": [2]}, {"safecode": [-1]}])
def test_a_pick_outside_the_lane_is_refused(rows, bad):
    with pytest.raises(IndexError):
        rows.regroup(bad)


def test_unknown_or_repeated_lanes_are_refused(rows):
    with pytest.raises(KeyError):
        rows.regroup({"nobody": [0]})
    with pytest.raises(ValueError):
        rows.add("vanilla", 1)
    with pytest.raises(ValueError):
        rows.add("empty", 0)
