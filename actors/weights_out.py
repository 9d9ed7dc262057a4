"""The policy's weights out to the rollout engines: through the Ray object store (``export_weights`` /
``publish_weights``) or broadcast over raylhf's weight group (``join_weight_group`` + ``send_weights``,
``actors/weight_wire.py``). Under ZeRO-3 every rank joins the layer-by-layer gathers and only rank 0 copies and
sends. Each returns the manifest the driver verifies the engines against (``raylhf/driver/weight_sync.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from actors.faults import maybe_die, sync_skipped
from actors.weight_wire import join_group, send_bucket
from raylhf.core.weights import tensor_entry


class WeightExport:
    """Mixin of PolicyWorker (needs ``rank``, ``node_address`` and ``_full_params``)."""

    rank: int
    weight_pg: Any = None

    def export_weights(self, bucket_mb: int = 64) -> list[Any]:
        """Rank 0 puts the full weights in the Ray object store as buckets and returns their refs.

        Every rank must call it (ZeRO-3 gathers are collective); ranks > 0 return ``[]``.
        """
        return self.publish_weights(bucket_mb)[0]

    def publish_weights(self, bucket_mb: int = 64) -> tuple[list[Any], dict[str, Any]]:
        """``export_weights`` plus the manifest of what it put: ``{name: (dtype, shape, checksum)}`` (rank 0)."""
        import ray

        refs: list[Any] = []
        manifest: dict[str, Any] = {}
        skip = sync_skipped()
        for bucket in self._buckets(bucket_mb):
            manifest.update({n: tensor_entry(t) for n, t in bucket})
            refs.append(ray.put([(n, t) for n, t in bucket if n not in skip]))
        return refs, manifest

    def _buckets(self, bucket_mb: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The full weights in buckets of about ``bucket_mb`` MiB, on rank 0 (other ranks only join the ZeRO-3
        gathers, layer by layer, and yield nothing)."""
        bucket: list[tuple[str, torch.Tensor]] = []
        size, limit = 0, bucket_mb * 2**20
        for name, t in self._full_params():
            if self.rank != 0:
                continue
            bucket.append((name, t))
            size += t.numel() * t.element_size()
            if size >= limit:
                yield bucket
                bucket, size = [], 0
        if bucket:
            yield bucket

    # ---- the collective weight sync (actors/weight_wire.py) -------------------------------------------------------
    def weight_group_address(self) -> tuple[str, int]:
        return self.node_address()

    def join_weight_group(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 hosts the weight group's store and joins as rank 0 (returns once every engine joined)."""
        self.weight_pg = None
        if self.rank == 0:
            self.weight_pg = join_group(host, port, 0, world_size, timeout_s, is_master=True)

    def send_weights(self, bucket_mb: int = 64) -> dict[str, Any]:
        """Broadcast the full weights over the weight group (every rank must call it: ZeRO-3 gathers are
        collective; rank 0 sends); returns rank 0's manifest ``{name: (dtype, shape, checksum)}``."""
        maybe_die("policy", "send_weights")
        pg = getattr(self, "weight_pg", None)
        if self.rank == 0 and pg is None:
            raise RuntimeError("send_weights before join_weight_group")
        manifest: dict[str, Any] = {}
        skip = sync_skipped()
        try:
            for bucket in self._buckets(bucket_mb):
                manifest.update({n: tensor_entry(t) for n, t in bucket})
                send_bucket(pg, [(n, t) for n, t in bucket if n not in skip])
            if self.rank == 0:
                send_bucket(pg, [])
        except BaseException:
            self.weight_pg = None  # a failed transfer leaves the group unusable: the next sync forms a new one
            raise
        return manifest
