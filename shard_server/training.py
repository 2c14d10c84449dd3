"""A collection's training: the first index, retraining behind a recall gate, and the recall estimate.

Part of `Collection` (shard_server/index.py). Training runs outside the collection's lock on a snapshot of the live
rows (rows below `_next` never change) and swaps the result in under it; items written meanwhile stay in the exact
buffer. When a retrain is due and how a candidate is judged is shard_server/retrain.py's policy; this module runs it
against the collection's columns (`_ivf`, `_params`, `_ivf_upto`, `_ivf_dead`, `_trained_on`, `_training`, `_retrain`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import replace
from typing import Callable

import faiss
import numpy as np

from shardsearch import index_params
from shardsearch.shard_server import ann, refine_fit
from shardsearch.shard_server import retrain as retraining
from shardsearch.shard_server import vectors as vector_rows
from shardsearch.shard_server.columns import Columns
from shardsearch.v1 import admin_pb2, search_pb2

logger = logging.getLogger(__name__)


class Training(Columns):
    """Training and retraining (a part of Collection: see the module docstring)."""

    def _due_reasons(self) -> list[str]:
        """Why a retrain is due (under the lock, or racing benignly from pending_work). O(1)."""
        if self._ivf is None:
            return []
        written = self._next - self._retrain.trained_upto
        return self._retrain.reasons(self._live, self._trained_on, written, self.train_threshold)

    def train(self) -> None:
        """Trains an index and swaps it in without the recall gate (the first index)."""
        self.retrain(gate=False)

    def retrain(
        self, gate: bool = True, options: search_pb2.IndexOptions | None = None
    ) -> admin_pb2.RetrainOutcome | None:
        """Builds a shadow index on a snapshot of the live vectors and swaps it in if its recall@10 on a held-out
        sample is no worse than the current index's (no gate for the first index, or with gate=False).

        Searches and writes go on meanwhile: the lock is held only to snapshot and to swap, and items written
        after the snapshot stay in the exact buffer. `options` replaces the collection's index options for this
        candidate only. Returns the outcome, or None when a retrain was already running.
        """
        with self._lock:
            if self._training:
                return None
            self._training = True
            tracker = self._retrain
            tracker.asked = False
            tracker.state = retraining.State.STATE_TRAINING
            upto = self._next
            alive = self._alive[:upto].copy()
            first = self._ivf is None
            gate = gate and not first
            vecs = self._vecs  # rows below `upto` never change: safe to read outside the lock
        labels = np.flatnonzero(alive).astype(np.int64)
        started = time.perf_counter()
        result = retraining.outcome(False, 0.0, 0.0, started, len(labels), "failed: interrupted")
        try:
            if vecs.wants_fit() and len(labels):
                vecs = self._quantize(vecs, labels, upto)
            result = self._shadow(vecs, labels, alive, upto, gate, options, started, first)
        except Exception as exc:  # kept for RetrainStatus; the current index stays
            logger.exception("collection %s: retraining failed", self.spec.name)
            result = retraining.outcome(False, 0.0, 0.0, started, len(labels), f"failed: {exc}")
        finally:
            with self._lock:
                tracker.state = retraining.State.STATE_IDLE
                tracker.last = result
                tracker.hold(self._next, len(labels))
                self._training = False
        return result

    def _quantize(self, vecs: vector_rows.VectorRows, labels: np.ndarray, upto: int) -> vector_rows.VectorRows:
        """Fits an sq8 store's range on the live rows and re-encodes them (outside the lock), then swaps the encoded
        store in with the rows written meanwhile; returns it."""
        quantizer = vecs.fit(labels)
        encoded = vecs.quantized(quantizer, upto)
        with self._lock:
            current, stop = self._vecs, self._next
            if encoded.capacity < current.capacity:
                encoded = encoded.grown(current.capacity, upto)
            encoded.data[upto:stop] = quantizer.compute_codes(np.ascontiguousarray(current.data[upto:stop]))
            self._vecs = encoded
        logger.info("collection %s: vectors stored as sq8 (%d bytes a row, was %d)", self.spec.name,
                    encoded.row_bytes, vecs.row_bytes)
        return encoded

    def _shadow(
        self, vecs: vector_rows.VectorRows, labels: np.ndarray, alive: np.ndarray, upto: int, gate: bool,
        options: search_pb2.IndexOptions | None, started: float, first: bool = False,
    ) -> admin_pb2.RetrainOutcome:
        """Builds the candidate, evaluates it against the current index (if `gate`), and swaps it in if it passes."""
        opts = self.spec.index if options is None else options
        index, chosen = ann.build(self.dim, self.metric, vecs, labels, opts, self.use_gpu)
        tracker, before, after = self._retrain, 0.0, 0.0
        sample = None
        promote, reason = True, "trained the first index" if first else "rebuilt without the recall gate"
        if gate or not opts.refine_factor:
            with self._lock:
                tracker.state = retraining.State.STATE_EVALUATING
            sample = retraining.draw_sample(vecs, labels, self.metric, self._scorer(vecs), seed=upto)
        if gate and sample is None:
            reason = "promoted: too few vectors to measure recall"
        elif gate:
            assert sample is not None
            before = self._sample_recall(sample, vecs, alive, upto)
            chosen, after, note = self._fit_nprobe(
                sample, vecs, alive, upto, index, chosen, before, bool(opts.default_nprobe))
            if not opts.refine_factor:
                chosen = self._fit_refine(sample, alive, upto, vecs, index, chosen, before)
                after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))
            promote, reason = retraining.verdict(before, after, note)
        elif sample is not None:  # the first index, or one rebuilt without the gate: fit its depth all the same
            chosen = self._fit_refine(sample, alive, upto, vecs, index, chosen, 0.0)
            after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))  # its first recall estimate
        with self._lock:
            if promote:
                self._ivf, self._params, self._ivf_upto = index, chosen, upto
                self._ivf_dead = len(labels) - int(np.count_nonzero(self._alive[labels]))
                self._trained_on = len(labels)
                tracker.trained_upto = upto
                tracker.fit_size = len(labels)
                tracker.changed(index)
                tracker.next_check = time.monotonic() + retraining.RECALL_CHECK_INTERVAL_S
            if sample is not None:
                tracker.measured(after if promote else before, tracker.index_version)
        logger.info(
            "collection %s: %s %s on %d vectors in %.2fs: %s", self.spec.name, "trained" if promote else "rejected",
            chosen.factory(), len(labels), time.perf_counter() - started, reason,
        )
        return retraining.outcome(promote, before, after, started, len(labels), reason)

    def _fit_nprobe(
        self, sample: retraining.Sample, vecs: vector_rows.VectorRows, alive: np.ndarray, upto: int, index: faiss.Index,
        chosen: index_params.IndexParams, before: float, fixed: bool,
    ) -> tuple[index_params.IndexParams, float, str]:
        """The candidate's recall on the sample at its default nprobe and, while that is below `before` (and the
        collection does not fix default_nprobe), at 1.5 times the nprobe, up to nlist: a shard that grew gets more,
        smaller lists, so the same nprobe covers less of it. Returns the parameters to promote with, their recall
        and a note on the nprobe for the outcome."""
        after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))
        rule, at_rule = chosen.default_nprobe, after
        while after < before and not fixed and chosen.default_nprobe < chosen.nlist:
            chosen = replace(chosen, default_nprobe=min(chosen.nlist, math.ceil(1.5 * chosen.default_nprobe)))
            after = self._sample_recall(sample, vecs, alive, upto, (index, chosen))
        if chosen.default_nprobe == rule:
            return chosen, after, ""
        return chosen, after, f" at nprobe {chosen.default_nprobe} (nprobe {rule} gave {at_rule:.3f})"

    def _fit_refine(
        self, sample: retraining.Sample, alive: np.ndarray, upto: int, vecs: vector_rows.VectorRows,
        index: faiss.Index, chosen: index_params.IndexParams, floor: float, live: bool = False,
    ) -> index_params.IndexParams:
        """`chosen` with the re-ranking depths fitted on the sample (shard_server/refine_fit.py) at its default
        nprobe; the one-shard depth keeps the sample's recall at `floor` (the current index's) where it can. `live`:
        `index` is the collection's own, searched under the lock like any search (a shadow needs none)."""
        deepest = replace(chosen, refine_factor=refine_fit.LADDER[-1], refine_by_shards=())
        with self._lock if live else contextlib.nullcontext():
            if index.ntotal == 0:  # every code compacted away: nothing to fit on until writes are absorbed
                return chosen
            found = ann.ivf_candidates(index, deepest, sample.queries, retraining.RECALL_K + 1)
        labels, valid, safe = ann.resolved([found], alive[:upto])
        valid &= labels != sample.labels[:, None]  # the sample's own items are held out
        scores = self._exact_scores(sample.queries, safe, vecs)
        table, estimates = refine_fit.fit(sample, labels, scores, valid, self.inner_product, floor)
        logger.info("collection %s: %s at nprobe %d (estimated merged recall@10 by shard count: %s)",
                    self.spec.name, refine_fit.describe(table), chosen.default_nprobe,
                    "; ".join(f"{s}: " + " ".join(f"x{r} {v:.3f}" for r, v in zip(refine_fit.LADDER, row))
                              for s, row in estimates.items()))
        return replace(chosen, refine_factor=table[0], refine_by_shards=table)

    def _scorer(self, vecs: vector_rows.VectorRows) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda queries, labels: self._exact_scores(queries, np.ascontiguousarray(labels), vecs)

    def _sample_recall(
        self, sample: retraining.Sample, vecs: vector_rows.VectorRows, alive: np.ndarray, upto: int,
        shadow: tuple[faiss.Index, index_params.IndexParams] | None = None,
    ) -> float:
        """recall@10 on the sample of a search path as `search` runs it (IVF-PQ candidates at the default nprobe
        plus the exact buffer, re-ranked exactly) over the snapshot's live items: the current index's, searched
        under the lock like any search, or a shadow's, which covers the whole snapshot."""
        queries, k = sample.queries, retraining.RECALL_K + 1  # one more: the query's own item is left out
        if shadow is None:
            with self._lock:
                start = min(self._ivf_upto, upto)
                found = ann.ivf_candidates(self._ivf, self._params, queries, k)
        else:
            start, found = upto, ann.ivf_candidates(*shadow, queries, k)
        candidates = [found]
        buffered = start + np.flatnonzero(alive[start:upto])
        if len(buffered):
            candidates.append(retraining.exact_search(queries, vecs, buffered, k, self.metric)[1])
        labels, valid, safe = ann.resolved(candidates, alive[:upto])
        valid &= labels != sample.labels[:, None]  # the sample's own items are held out
        found, scores = ann.rerank(labels, valid, self._exact_scores(queries, safe, vecs), retraining.RECALL_K,
                                   self.inner_product)
        return retraining.recall(sample, found, scores, self.inner_product)

    def measure_recall(self) -> float:
        """Estimates the current search path's recall@10 on a held-out sample (an exact search of the sample over
        the shard: the maintenance thread does it at most every RECALL_CHECK_INTERVAL_S). 0.0: nothing to measure."""
        with self._lock:
            if self._ivf is None:
                return 0.0
            upto, vecs, version = self._next, self._vecs, self._retrain.index_version
            index, chosen, size = self._ivf, self._params, int(self._ivf.ntotal)
            refit = self._refit_due()
            alive = self._alive[:upto].copy()
        labels = np.flatnonzero(alive).astype(np.int64)
        sample = retraining.draw_sample(vecs, labels, self.metric, self._scorer(vecs), seed=upto)
        if refit:  # the index grew since its depths were fitted: they follow the data
            refitted = chosen
            if sample is not None and chosen is not None:
                refitted = self._fit_refine(sample, alive, upto, vecs, index, chosen, 0.0, live=True)
            with self._lock:
                if self._ivf is index and self._params is chosen:  # not retrained meanwhile (a retrain fits its own)
                    self._params = refitted
                    self._retrain.fit_size = size  # also when there was nothing to fit on: the growth is seen
        value = self._sample_recall(sample, vecs, alive, upto) if sample is not None else 0.0
        with self._lock:
            if sample is None:
                self._retrain.next_check = time.monotonic() + retraining.RECALL_CHECK_INTERVAL_S
            else:
                self._retrain.measured(value, version)
        return value

    def _refit_due(self) -> bool:
        """Whether a collection that leaves refine_factor unset should fit its depths again: its index grew
        REFIT_GROWTH times since they were fitted (absorbed writes: each shard's candidates for a query are drawn
        from more items, so it may need a deeper list), or they never were (an index from before fitted depths
        existed: fit_size 0). O(1)."""
        return bool(self._params is not None and self._ivf is not None and not self.spec.index.refine_factor
                    and self._ivf.ntotal >= refine_fit.REFIT_GROWTH * max(1, self._retrain.fit_size))

    def ask_retrain(self, force: bool) -> bool:
        """Asks the maintenance thread for a retrain where one is due (any time with `force`). False: none asked
        (one is running or asked already, or none is due). ValueError: too few vectors to train."""
        with self._lock:
            if self._training or self._retrain.asked:
                return False
            untrained = self._ivf is None
            if untrained and self._live < self.train_threshold:
                if not force:
                    return False
                raise ValueError(f"the collection holds {self._live} vectors on this shard; its first index is "
                                 f"trained at {self.train_threshold} (index.train_threshold)")
            if not (force or untrained or self._due_reasons()):
                return False
            self._retrain.asked = True
            return True

    def retrain_status(self) -> admin_pb2.RetrainStatus:
        """The retrain state for RetrainStatus. A retrain asked for but not yet started shows as TRAINING."""
        with self._lock:
            tracker = self._retrain
            reasons = self._due_reasons()
            if reasons and tracker.held(self._next):
                reasons.append(f"no automatic retrain until {tracker.hold_next - self._next} more writes or "
                               f"{(tracker.hold_until - time.monotonic()) / 60:.0f} min have passed (one just ran)")
            state = retraining.State.STATE_TRAINING if tracker.asked else tracker.state
            status = admin_pb2.RetrainStatus(
                state=state, due=bool(reasons), reasons=reasons, trained_on=self._trained_on,
                added_since_training=self._next - (tracker.trained_upto if self._ivf is not None else 0),
                list_imbalance=tracker.imbalance, estimated_recall=tracker.recall,
                estimated_at_unix_ms=tracker.recall_at_ms,
            )
            if tracker.last.finished_unix_ms:
                status.last.CopyFrom(tracker.last)
        return status
