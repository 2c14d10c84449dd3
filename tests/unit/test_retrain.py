"""Retraining on real FAISS: when it is due, the recall gate (promote or keep), and searches and writes meanwhile.

The drift: a shard trains on one embedding-like mixture, then receives four times as many vectors from a shifted one.
Its stale coarse quantizer puts the new vectors into a few huge lists, and its PQ codebooks fit them badly.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from shardsearch.shard_server import retrain as retraining
from shardsearch.shard_server.index import Collection
from shardsearch.v1 import admin_pb2, search_pb2

DIM = 32
TRAINED = 4_000
ADDED = 16_000
IDLE = admin_pb2.RetrainStatus.STATE_IDLE
TRAINING = admin_pb2.RetrainStatus.STATE_TRAINING


def mixture(n: int, rng: np.random.Generator, shift: float) -> np.ndarray:
    """20 clusters, each spread over its own 4-d subspace (a low intrinsic dimension, as real embeddings have)."""
    centres = rng.standard_normal((20, DIM)) + shift
    spans = rng.standard_normal((20, 4, DIM)) / 2.0
    which = rng.integers(0, 20, n)
    z = rng.standard_normal((n, 4))
    noise = 0.1 * rng.standard_normal((n, DIM))
    return (centres[which] + 0.8 * np.einsum("ni,nid->nd", z, spans[which]) + noise).astype(np.float32)


def make() -> Collection:
    spec = search_pb2.Collection(name="t", dim=DIM, index=search_pb2.IndexOptions(train_threshold=TRAINED))
    return Collection(spec)


@pytest.fixture
def drifted() -> tuple[Collection, np.ndarray, np.ndarray]:
    """A collection trained on TRAINED vectors that then received ADDED shifted ones (absorbed into the stale
    index, not retrained): (collection, all vectors by id, held-out queries from the shifted data)."""
    rng = np.random.default_rng(7)
    old, new = mixture(TRAINED, rng, 0.0), mixture(ADDED + 200, rng, 3.0)
    coll = make()
    coll.upsert([str(i) for i in range(TRAINED)], old)
    coll.maintain()
    assert coll.info().trained and not coll.retrain_status().due
    coll.upsert([str(i) for i in range(TRAINED, TRAINED + ADDED)], new[:ADDED])
    coll.absorb()
    return coll, np.concatenate([old, new[:ADDED]]), new[ADDED:]


def recall(coll: Collection, vectors: np.ndarray, queries: np.ndarray) -> float:
    """recall@10 of the collection's search against exact search over `vectors` (ids are row numbers)."""
    _, truth = faiss.knn(queries, vectors, 10)
    found = coll.search(queries, 10).labels
    return float(np.mean([len(set(coll.ids_for(row)) & {str(i) for i in exact}) / 10
                          for row, exact in zip(found, truth)]))


def test_drift_makes_a_retrain_due_and_the_promoted_retrain_restores_recall(drifted) -> None:
    coll, vectors, queries = drifted
    estimate = coll.measure_recall()
    status = coll.retrain_status()
    assert status.due and status.state == IDLE
    assert status.trained_on == TRAINED and status.added_since_training == ADDED
    assert status.list_imbalance >= retraining.IMBALANCE_DUE
    assert status.estimated_recall == estimate < retraining.RECALL_DUE_BELOW
    assert [r.split(":")[0].split(" ")[0] for r in status.reasons] == ["vectors", "IVF", "estimated"]
    stale = recall(coll, vectors, queries)

    outcome = coll.retrain()

    assert outcome is not None and outcome.promoted, outcome
    assert outcome.recall_before == pytest.approx(estimate, abs=0.1)
    assert outcome.recall_after >= outcome.recall_before and outcome.recall_after > 0.95
    assert outcome.trained_on == TRAINED + ADDED
    fresh = recall(coll, vectors, queries)
    assert stale < 0.8 and fresh > 0.95, (stale, fresh)
    status = coll.retrain_status()
    assert not status.due and status.state == IDLE and status.last == outcome
    assert status.added_since_training == 0 and status.list_imbalance < retraining.IMBALANCE_DUE


def test_the_maintenance_thread_retrains_when_due_through_the_gate(drifted) -> None:
    coll, vectors, queries = drifted
    assert coll.pending_work() == "retrain"  # vectors written and list imbalance; no recall estimate needed
    coll.maintain()
    last = coll.retrain_status().last
    assert last.promoted and 0 < last.recall_before <= last.recall_after, last  # measured both: gated
    assert coll.pending_work() is None
    assert recall(coll, vectors, queries) > 0.95


def test_a_worse_candidate_is_rejected_and_automatic_retrains_then_wait(drifted) -> None:
    coll, vectors, queries = drifted
    current = coll._ivf
    before = recall(coll, vectors, queries)
    worse = search_pb2.IndexOptions(nlist=16, pq_m=2, default_nprobe=1, refine_factor=1)

    outcome = coll.retrain(options=worse)

    assert outcome is not None and not outcome.promoted
    assert outcome.recall_after < outcome.recall_before
    assert outcome.reason.startswith("kept the current index"), outcome.reason
    assert coll._ivf is current and recall(coll, vectors, queries) == before
    status = coll.retrain_status()
    assert status.due and status.last == outcome and status.trained_on == TRAINED
    assert status.reasons[-1].startswith("no automatic retrain until")
    assert coll.pending_work() != "retrain"  # no loop: the same data would be rejected again
    more = int(retraining.HOLD_WRITES * (TRAINED + ADDED)) + 1
    coll.upsert([f"more{i}" for i in range(more)], mixture(more, np.random.default_rng(8), 3.0))
    assert coll.pending_work() == "retrain"


def test_asking_for_a_retrain(drifted) -> None:
    untrained = make()
    untrained.upsert(["a", "b"], np.zeros((2, DIM), np.float32))
    assert untrained.ask_retrain(force=False) is False
    with pytest.raises(ValueError, match="train_threshold"):
        untrained.ask_retrain(force=True)

    coll, _, _ = drifted
    coll.retrain()
    assert not coll.retrain_status().due
    assert coll.ask_retrain(force=False) is False  # nothing due
    assert coll.ask_retrain(force=True) is True
    assert coll.ask_retrain(force=True) is False  # asked already: not twice
    assert coll.retrain_status().state == TRAINING  # until the maintenance thread has run it
    assert coll.pending_work() == "retrain"
    coll.maintain()
    status = coll.retrain_status()
    assert status.state == IDLE and status.last.recall_before > 0 and not status.due


def test_searches_and_writes_during_a_retrain_stay_exact(drifted) -> None:
    coll, vectors, _ = drifted
    rng = np.random.default_rng(9)
    errors: list[BaseException] = []
    done = threading.Event()
    outcome: list[admin_pb2.RetrainOutcome | None] = []

    def search_meanwhile() -> None:
        while not done.is_set():
            try:
                assert (coll.search(vectors[:50], 10).labels >= 0).all()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

    def retrain() -> None:
        outcome.append(coll.retrain())
        done.set()

    searcher = threading.Thread(target=search_meanwhile)
    trainer = threading.Thread(target=retrain)
    searcher.start()
    trainer.start()
    written: dict[str, np.ndarray] = {}
    deleted: set[str] = set()
    during, step = 0, 0
    while not done.is_set() or step < 20:
        training = coll.info().training
        fresh = mixture(2, rng, 3.0)
        new_id, old_id, gone = f"new{step}", str(step), str(TRAINED + step)  # old ones are in the snapshot
        coll.upsert([new_id, old_id], np.stack([fresh[0], vectors[step] + 5.0]))
        coll.delete([gone])
        written.update({new_id: fresh[0], old_id: vectors[step] + 5.0})
        deleted.add(gone)
        check_exact(coll, written, deleted, {old_id: vectors[step]})
        during += training and coll.info().training
        step += 1
    trainer.join()
    searcher.join()
    assert not errors, errors[:3]
    assert outcome[0] is not None and outcome[0].promoted
    assert during >= 3, f"only {during} writes landed while training: the test did not overlap"
    check_exact(coll, written, deleted, {str(i): vectors[i] for i in range(step)})


def check_exact(coll: Collection, written: dict[str, np.ndarray], deleted: set[str],
                overwritten: dict[str, np.ndarray]) -> None:
    """Each written item is its own vector's nearest hit; deleted items and old vectors of overwritten ones are gone."""
    ids = list(written)
    hits = coll.search(np.stack([written[i] for i in ids]), 10).labels
    assert [coll.ids_for(row)[0] for row in hits] == ids
    everything = [set(coll.ids_for(row)) for row in coll.search(np.stack(list(overwritten.values())), 50).labels]
    for item_id, found in zip(overwritten, everything):
        assert item_id not in found  # it moved far away
        assert not found & deleted
