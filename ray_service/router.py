"""Bucket-affine request routing for the decoder deployment (Ray Serve's ``RequestRouter`` API).

Each decoder replica batches only jobs of one bucket (mode x working size) together. With Ray's
default router (power of two choices on queue length) requests of one bucket spread over all replicas,
so each replica sees only its share of the bucket and batches run less full. This router sends a
request to the replica that already holds the most queued or in-flight jobs of the request's bucket,
unless that replica is more loaded than the least-loaded candidate by more than
``imbalance_threshold`` requests; then (and for requests without a bucket) the least-loaded replica
wins, like the default router.

Where the bucket comes from: calls through the encoder's deployment handle carry it as the keyword
argument ``bucket`` (``ray_service.forwarding``). What each replica holds is known two ways:

- what this router sent and has not seen complete (``on_request_routed`` / ``on_request_completed``),
  exact but only for this router's own traffic (one router per calling process);
- each replica's ``record_routing_stats()``: its scheduler's queued jobs per bucket, polled by Ray
  every ``request_routing_stats_period_s``: every caller's traffic, slightly stale.

Load is Ray's cached count of a replica's ongoing requests (kept by the router as it sends), or this
router's own in-flight count when larger.
"""

from __future__ import annotations

import collections
import random
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

BUCKETS_STAT = "queued_buckets"  # routing-stats key: {bucket label: queued jobs}


def request_bucket(pending_request: PendingRequest | None) -> str | None:
    if pending_request is None:
        return None
    bucket = pending_request.kwargs.get("bucket")
    return bucket if isinstance(bucket, str) else None


class BucketAffinityRouter(RequestRouter):
    """Prefer the replica already batching the request's bucket, within a load imbalance threshold."""

    def initialize_state(self, imbalance_threshold: int = 4, **kwargs: Any) -> None:
        if not isinstance(imbalance_threshold, int) or imbalance_threshold < 0:
            raise ValueError(f"imbalance_threshold must be a non-negative integer, got {imbalance_threshold!r}")
        self.imbalance_threshold = imbalance_threshold
        # Requests this router sent and that have not completed: id -> (replica, bucket).
        self._sent: dict[str, tuple[ReplicaID, str | None]] = {}
        self._sent_buckets: dict[ReplicaID, collections.Counter] = collections.defaultdict(collections.Counter)
        self._in_flight: collections.Counter = collections.Counter()

    # -- the policy ------------------------------------------------------------------------------
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        # Equal loads in random order (as the default router's random pairs), so idle replicas share the work.
        by_load = sorted(random.sample(candidate_replicas, len(candidate_replicas)), key=self.load)  # noqa: S311  # nosec B311
        bucket = request_bucket(pending_request)
        if bucket is None:
            return [by_load]
        held = {r.replica_id: self.bucket_jobs(r, bucket) for r in by_load}
        affine = max(by_load, key=lambda r: held[r.replica_id])
        if held[affine.replica_id] == 0 or self.load(affine) - self.load(by_load[0]) > self.imbalance_threshold:
            return [by_load]
        # First rank: the affine replica alone; when it refuses (full), the rest by load.
        return [[affine], [r for r in by_load if r.replica_id != affine.replica_id]]

    def load(self, replica: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(replica.replica_id) or 0
        return max(cached, self._in_flight[replica.replica_id])

    def bucket_jobs(self, replica: RunningReplica, bucket: str) -> int:
        stats = (replica.routing_stats or {}).get(BUCKETS_STAT) or {}
        return max(int(stats.get(bucket, 0)), self._sent_buckets[replica.replica_id][bucket])

    # -- bookkeeping of this router's own traffic --------------------------------------------------
    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        request_id = pending_request.metadata.internal_request_id
        bucket = request_bucket(pending_request)
        self._sent[request_id] = (replica_id, bucket)
        self._in_flight[replica_id] += 1
        if bucket is not None:
            self._sent_buckets[replica_id][bucket] += 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        sent = self._sent.pop(internal_request_id, None)
        if sent is None:
            return
        self._in_flight[sent[0]] -= 1
        if sent[1] is None:
            return
        counts = self._sent_buckets[sent[0]]
        counts[sent[1]] -= 1
        if counts[sent[1]] <= 0:
            del counts[sent[1]]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._sent_buckets.pop(replica_id, None)
        self._in_flight.pop(replica_id, None)
        self._sent = {k: v for k, v in self._sent.items() if v[0] != replica_id}
