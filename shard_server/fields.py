"""A collection's structured fields: each label's serialised `Fields`, and what filters read (keyword lists and
number columns).

Entries of labels that die stay in the keyword lists and number columns and are masked by the collection's `alive`
flags; a relabel or a restore builds a new index from the live labels' blobs. Not thread-safe: the collection's
lock guards it, and a search resolves labels through `blobs` as it was when it took its candidates (a relabel
replaces the whole index, never the dict in place).
"""

from __future__ import annotations

import array

import numpy as np

from shardsearch.v1 import search_pb2


class FieldIndex:
    def __init__(self, capacity: int) -> None:
        self.blobs: dict[int, bytes] = {}  # label -> serialised search_pb2.Fields
        self.nbytes = 0  # the bytes of `blobs`' values
        self._capacity = capacity
        self._keywords: dict[str, dict[str, array.array]] = {}  # field -> keyword -> labels holding it (append-only)
        self._numbers: dict[str, np.ndarray] = {}  # field -> value by label (NaN: absent)

    @classmethod
    def rebuilt(cls, blobs: dict[int, bytes], capacity: int) -> "FieldIndex":
        """An index of these labels' fields (a relabel's new labels, or a snapshot's)."""
        index = cls(capacity)
        for label, blob in blobs.items():
            if blob:
                index.add(label, search_pb2.Fields.FromString(blob), blob)
        return index

    @property
    def columns(self) -> int:
        """Number fields held as columns (each costs 8 bytes a label)."""
        return len(self._numbers)

    def get(self, label: int) -> bytes:
        return self.blobs.get(label, b"")

    def add(self, label: int, fields: search_pb2.Fields, blob: bytes | None = None) -> None:
        """Keeps the item's fields and adds its label to the keyword lists and number columns."""
        blob = blob if blob is not None else fields.SerializeToString()
        self.blobs[label] = blob
        self.nbytes += len(blob)
        for name, value in fields.values.items():
            kind = value.WhichOneof("kind")
            if kind == "keyword":
                self._keywords.setdefault(name, {}).setdefault(value.keyword, array.array("q")).append(label)
            elif kind == "keywords":
                lists = self._keywords.setdefault(name, {})
                for keyword in set(value.keywords.values):
                    lists.setdefault(keyword, array.array("q")).append(label)
            elif kind == "number":
                column = self._numbers.get(name)
                if column is None:
                    column = self._numbers[name] = np.full(self._capacity, np.nan)
                column[label] = value.number

    def drop(self, label: int) -> None:
        """The label died: its blob goes (its list entries stay, masked by `alive`)."""
        self.nbytes -= len(self.blobs.pop(label, b""))

    def grow(self, capacity: int) -> None:
        self._capacity = capacity
        for name, column in self._numbers.items():
            grown = np.full(capacity, np.nan)
            grown[: len(column)] = column
            self._numbers[name] = grown

    def mask(self, flt: search_pb2.Filter, upto: int) -> np.ndarray:
        """Labels below `upto` whose fields pass `flt` (alive or not: the caller masks)."""
        kind = flt.WhichOneof("kind")
        if kind == "match":
            mask = np.zeros(upto, dtype=bool)
            lists = self._keywords.get(flt.match.field, {})
            for value in flt.match.values:
                labels = lists.get(value)
                if labels:
                    found = np.frombuffer(labels, dtype=np.int64)
                    mask[found[found < upto]] = True
            return mask
        if kind == "range":
            column = self._numbers.get(flt.range.field)
            if column is None:
                return np.zeros(upto, dtype=bool)
            values = column[:upto]
            mask = ~np.isnan(values)
            bounds = flt.range
            with np.errstate(invalid="ignore"):
                if bounds.HasField("gt"):
                    mask &= values > bounds.gt
                if bounds.HasField("gte"):
                    mask &= values >= bounds.gte
                if bounds.HasField("lt"):
                    mask &= values < bounds.lt
                if bounds.HasField("lte"):
                    mask &= values <= bounds.lte
            return mask
        if kind == "all_of":
            mask = np.ones(upto, dtype=bool)
            for child in flt.all_of.filters:
                mask &= self.mask(child, upto)
            return mask
        if kind in ("any_of", "none_of"):
            mask = np.zeros(upto, dtype=bool)
            for child in getattr(flt, kind).filters:
                mask |= self.mask(child, upto)
            return ~mask if kind == "none_of" else mask
        return np.ones(upto, dtype=bool)  # no filter
