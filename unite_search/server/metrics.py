"""The server's counters, written in Prometheus' text format."""

from __future__ import annotations

import threading
from collections.abc import Mapping

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters the server keeps, written in Prometheus' text format by ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # endpoint -> [sum seconds, count]
        self.batches = 0
        self.batch_items = 0
        self.batch_buckets = [0] * len(BATCH_BUCKETS)
        self.encode_seconds = 0.0
        self.refreshes = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            entry = self.latency.setdefault(endpoint, [0.0, 0])
            entry[0] += seconds
            entry[1] += 1

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.batch_items += size
            self.encode_seconds += seconds
            for i, bound in enumerate(BATCH_BUCKETS):
                if size <= bound:
                    self.batch_buckets[i] += 1

    def refreshed(self) -> None:
        with self._lock:
            self.refreshes += 1

    def render(self, queue_depth: int, shards: Mapping[str, int], serial: int) -> str:
        with self._lock:
            lines = [
                "# HELP unite_search_requests_total HTTP requests answered, by endpoint and status.",
                "# TYPE unite_search_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'unite_search_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {n}')
            lines += [
                "# HELP unite_search_request_duration_seconds Time to answer a request, by endpoint.",
                "# TYPE unite_search_request_duration_seconds summary",
            ]
            for endpoint, (total, n) in sorted(self.latency.items()):
                name = _label(endpoint)
                lines.append(f'unite_search_request_duration_seconds_sum{{endpoint="{name}"}} {total:.6f}')
                lines.append(f'unite_search_request_duration_seconds_count{{endpoint="{name}"}} {n}')
            lines += [
                "# HELP unite_search_encoder_batches_total Forward passes of the encoder for queries.",
                "# TYPE unite_search_encoder_batches_total counter",
                f"unite_search_encoder_batches_total {self.batches}",
                "# HELP unite_search_encoder_batch_size Queries encoded per forward pass.",
                "# TYPE unite_search_encoder_batch_size histogram",
            ]
            for bound, n in zip(BATCH_BUCKETS, self.batch_buckets, strict=True):
                lines.append(f'unite_search_encoder_batch_size_bucket{{le="{bound}"}} {n}')
            lines += [
                f'unite_search_encoder_batch_size_bucket{{le="+Inf"}} {self.batches}',
                f"unite_search_encoder_batch_size_sum {self.batch_items}",
                f"unite_search_encoder_batch_size_count {self.batches}",
                "# HELP unite_search_encoder_seconds_total Time spent in encoder forward passes.",
                "# TYPE unite_search_encoder_seconds_total counter",
                f"unite_search_encoder_seconds_total {self.encode_seconds:.6f}",
                "# HELP unite_search_encoder_queue_depth Queries waiting for, or in, an encoder forward pass.",
                "# TYPE unite_search_encoder_queue_depth gauge",
                f"unite_search_encoder_queue_depth {queue_depth}",
                "# HELP unite_search_index_refreshes_total Times the server switched to a newly published index.",
                "# TYPE unite_search_index_refreshes_total counter",
                f"unite_search_index_refreshes_total {self.refreshes}",
            ]
        lines += [
            "# HELP unite_search_index_serial Publish serial of the index state being served.",
            "# TYPE unite_search_index_serial gauge",
            f"unite_search_index_serial {serial}",
            "# HELP unite_search_index_rows Rows per shard of the index state being served.",
            "# TYPE unite_search_index_rows gauge",
        ]
        lines += [f'unite_search_index_rows{{shard="{_label(name)}"}} {rows}' for name, rows in sorted(shards.items())]
        return "\n".join(lines) + "\n"
