"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_ITEM_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
BATCH_TOKEN_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("videoreward_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.items = Counter("videoreward_items_scored_total", "Items scored successfully", registry=r)
        self.errors = Counter("videoreward_item_errors_total", "Items that failed, by error code", ["code"], registry=r)
        self.rejected = Counter("videoreward_rejected_total", "Requests rejected before work, by reason", ["reason"], registry=r)
        self.latency = Histogram("videoreward_request_latency_seconds", "Request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("videoreward_queue_wait_seconds", "Wait of an item for its batch", buckets=LATENCY_BUCKETS, registry=r)
        self.videos_decoded = Counter("videoreward_videos_decoded_total", "Videos decoded (after coalescing)", registry=r)
        self.decode = Histogram("videoreward_decode_seconds", "Decode + prepare time per item", buckets=LATENCY_BUCKETS, registry=r)
        self.forward = Histogram("videoreward_forward_seconds", "Forward pass time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_items = Histogram("videoreward_batch_size_items", "Items per forward pass", buckets=BATCH_ITEM_BUCKETS, registry=r)
        self.batch_tokens = Histogram("videoreward_batch_size_tokens", "Padded tokens per forward pass", buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("videoreward_queue_depth", "Prepared items waiting for a batch", registry=r)
        self.inflight = Gauge("videoreward_inflight_items", "Items admitted and not finished", registry=r)
        self.cache_hits = Counter("videoreward_cache_hits_total", "Result cache hits", registry=r)
        self.cache_misses = Counter("videoreward_cache_misses_total", "Result cache misses", registry=r)
        self.ready = Gauge("videoreward_ready", "1 when the service is ready", registry=r)
