"""Which rows of the shared batch belong to which method: the engine's only bookkeeping.

The batch is laid out lane after lane, in the order lanes joined: vanilla's row, then
SafeCoDe's real and noised rows, then SafeSteer's k candidate rows, and so on. Every change
of layout is one call to `regroup`, which returns the batch rows to gather (an index for
`DecodeState.index_select`) and remembers the new widths.
"""
from __future__ import annotations

from typing import Mapping, Sequence


class RowMap:
    """Lane name -> how many consecutive rows it holds in the batch, in batch order."""

    def __init__(self) -> None:
        self._widths: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(self._widths.values())

    def __contains__(self, name: str) -> bool:
        return name in self._widths

    @property
    def names(self) -> list[str]:
        return list(self._widths)

    def add(self, name: str, width: int) -> range:
        """A lane joins at the end of the batch; returns its rows."""
        if name in self._widths:
            raise ValueError(f"lane {name!r} is already in the batch")
        if width < 1:
            raise ValueError(f"lane {name!r} needs at least one row, got {width}")
        start = len(self)
        self._widths[name] = width
        return range(start, start + width)

    def block(self, name: str) -> range:
        """The batch rows of lane `name`."""
        start = 0
        for other, width in self._widths.items():
            if other == name:
                return range(start, start + width)
            start += width
        raise KeyError(name)

    def regroup(self, picks: Mapping[str, Sequence[int]]) -> list[int]:
        """Each lane keeps `picks[name]`, rows of its own block (repeats allowed: k candidates on
        one prefix); a lane with no picks, or missing from `picks`, leaves. Returns the batch rows
        to gather, lane after lane in the same order."""
        index: list[int] = []
        widths: dict[str, int] = {}
        for name in self._widths:
            mine = list(picks.get(name, ()))
            block = self.block(name)
            if any(not 0 <= i < len(block) for i in mine):
                raise IndexError(f"lane {name!r} has {len(block)} rows, picked {mine}")
            if mine:
                index += [block[i] for i in mine]
                widths[name] = len(mine)
        unknown = set(picks) - set(self._widths)
        if unknown:
            raise KeyError(f"not in the batch: {sorted(unknown)}")
        self._widths = widths
        return index
