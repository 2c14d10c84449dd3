"""The ring layout (admin_pb2.Topology) as the coordinators and the shards read it, and the ring selections of a move.

A move takes the ring from A (`move.from_shards`) to B (`shards`) in two phases, each announced to every replica of
every shard before any coordinator acts on it:

- COPYING: writes go to the owners on A and on B; reads by id go to A (the old owners have everything); searches go
  to every shard of A and B and hits are de-duplicated by id. A shard keeps the ids it owns on A or on B.
- SWITCHED: reads by id go to B; a shard keeps only the ids it owns on B, dropping the others as it stores the
  layout. Writes still go to both rings: while the announcement is under way, a coordinator that already switched
  still searches old owners that have not, and their copies must stay current until they drop them.

When the move ends, the layout is B alone. Versions only grow; a shard refuses requests routed by an older version
(ABORTED) so that no coordinator acts on a stale ring once a newer one has been announced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from shardsearch.errors import InvalidArgument
from shardsearch.ring import DEFAULT_VNODES, Ring
from shardsearch.v1 import admin_pb2, shard_pb2

BUCKET_BITS = 6  # checksum buckets: the top 6 bits of the id hash
BUCKETS = 1 << BUCKET_BITS


def bootstrap(shards: Sequence[tuple[str, Sequence[str]]], vnodes: int = DEFAULT_VNODES) -> admin_pb2.Topology:
    """The layout from a coordinator's flags (version 0: never stored, replaced by any stored one)."""
    return admin_pb2.Topology(
        version=0, vnodes=vnodes,
        shards=[admin_pb2.ShardSpec(name=name, addresses=list(addresses)) for name, addresses in shards],
    )


@dataclass(frozen=True)
class Layout:
    topology: admin_pb2.Topology
    ring: Ring
    """B: the ring being moved to (or the only one)."""
    previous: Ring | None
    """A during a move, else None."""

    @classmethod
    def of(cls, topology: admin_pb2.Topology) -> "Layout":
        vnodes = topology.vnodes or DEFAULT_VNODES
        ring = Ring([s.name for s in topology.shards], vnodes)
        previous = None
        if topology.HasField("move") and topology.move.from_shards:
            previous = Ring([s.name for s in topology.move.from_shards], vnodes)
        return cls(topology, ring, previous)

    @property
    def version(self) -> int:
        return self.topology.version

    @property
    def moving(self) -> bool:
        return self.previous is not None

    @property
    def copying(self) -> bool:
        return self.moving and self.topology.move.phase == admin_pb2.Move.PHASE_COPYING

    def members(self) -> list[tuple[str, list[str]]]:
        """Every shard of both rings with its replica addresses, B's first (the shards a coordinator talks to)."""
        specs: dict[str, list[str]] = {s.name: list(s.addresses) for s in self.topology.shards}
        if self.moving:
            for spec in self.topology.move.from_shards:
                specs.setdefault(spec.name, list(spec.addresses))
        return list(specs.items())

    def read_ring(self) -> Ring:
        """Where reads by id and listings go: the old owners while copying, the new ones after."""
        return self.previous if self.copying and self.previous is not None else self.ring

    def write_rings(self) -> list[Ring]:
        return [self.ring] if self.previous is None else [self.ring, self.previous]

    def search_names(self) -> list[str]:
        return [name for name, _ in self.members()]

    def owned(self, shard: str, hashes: np.ndarray) -> np.ndarray:
        """Which ids (by hash) `shard` keeps under this layout."""
        mask = self.ring.owns([shard], hashes)
        if self.copying and self.previous is not None:
            mask |= self.previous.owns([shard], hashes)
        return mask


def selection(ring: Ring, owners: Sequence[str]) -> shard_pb2.RingSelection:
    """The ids whose owner on `ring` is one of `owners`."""
    return shard_pb2.RingSelection(ring=list(ring.shards), vnodes=ring.vnodes, owners=list(owners))


def move_range(layout: Layout, source: str, target: str, buckets: Sequence[int] = ()) -> shard_pb2.RingSelection:
    """The ids a move takes from `source` (their owner on the old ring) to `target` (their owner on the new one)."""
    assert layout.previous is not None
    return shard_pb2.RingSelection(
        ring=list(layout.ring.shards), vnodes=layout.ring.vnodes, owners=[target], buckets=list(buckets),
        from_ring=list(layout.previous.shards), from_owners=[source],
    )


class Selector:
    """A RingSelection ready to test id hashes (the shard side of a move's copy and verification)."""

    def __init__(self, select: shard_pb2.RingSelection) -> None:
        if not select.ring:
            raise InvalidArgument("select.ring: name the ring's shards")
        vnodes = select.vnodes or DEFAULT_VNODES
        self._ring = Ring(list(select.ring), vnodes)
        self._owners = list(select.owners)
        self._from = Ring(list(select.from_ring), vnodes) if select.from_ring else None
        self._from_owners = list(select.from_owners)
        self._buckets = np.zeros(BUCKETS, dtype=bool)
        if select.buckets:
            self._buckets[[b for b in select.buckets if 0 <= b < BUCKETS]] = True
        else:
            self._buckets[:] = True

    def mask(self, hashes: np.ndarray) -> np.ndarray:
        mask = self._ring.owns(self._owners, hashes) & self._buckets[bucket_of(hashes)]
        if self._from is not None:
            mask &= self._from.owns(self._from_owners, hashes)
        return mask


def bucket_of(hashes: np.ndarray) -> np.ndarray:
    return (hashes >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)


_MULTIPLIERS = np.random.default_rng(0x5EED).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def item_hashes(id_hashes: np.ndarray, versions: np.ndarray, vectors: np.ndarray | None) -> np.ndarray:
    """A 64-bit hash of each item's (id, version, vector bits; None: the vectors left out). The version names the
    write, so equal hashes mean the same write (payload and fields included) on both sides."""
    with np.errstate(over="ignore"):
        if vectors is None:
            vector_hash = np.zeros(len(id_hashes), dtype=np.uint64)
        else:
            words = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32).astype(np.uint64)
            vector_hash = (words * np.resize(_MULTIPLIERS, words.shape[1])).sum(axis=1, dtype=np.uint64)
        return _mix(id_hashes ^ _mix(versions.astype(np.uint64) ^ _mix(vector_hash)))


def checksums(hashes: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket: the number of items and the sum (mod 2^64) of their item hashes."""
    buckets = bucket_of(hashes)
    counts = np.bincount(buckets, minlength=BUCKETS).astype(np.uint64)
    sums = np.zeros(BUCKETS, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.add.at(sums, buckets, item)
    return counts, sums
