"""What an ingest did: :class:`IngestReport` (counts, failures, timings) and its statuses and exit codes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .corpus import Problem

EXIT_OK, EXIT_FAILED, EXIT_WITH_FAILURES = 0, 1, 3
SHOWN = 20  # failures (and skipped files) a summary names; the run log and --json hold them all

# Report statuses. Run logs written before the rename call WITH_FAILURES "skipped" (runs.RENAMED_STATUS).
OK, WITH_FAILURES, FAILED, INTERRUPTED = "ok", "finished_with_failures", "failed", "interrupted"
STATUS_WORDS = {OK: "ok", WITH_FAILURES: "finished with failures", FAILED: "failed", INTERRUPTED: "interrupted"}


def status_words(status: str) -> str:
    """A report status as a person reads it (older run logs' ``skipped`` included)."""
    if status == "skipped":
        status = WITH_FAILURES
    return STATUS_WORDS.get(status, status)


@dataclass
class IngestReport:
    """What an ingest did. ``status``: ``ok``; ``finished_with_failures`` (finished, some inputs failed and
    are listed in ``failures``); ``failed``; or ``interrupted`` (Ctrl-C; rerunning continues)."""

    index: str
    corpus: str
    model: str
    status: str = "ok"
    items: int = 0  # units in the corpus now
    encoded_items: int = 0
    encoded_rows: int = 0
    unchanged_items: int = 0
    relabeled_items: int = 0  # same content, new paths or caption: updated without re-encoding
    removed_items: int = 0  # gone from the corpus, removed from the index
    redone_items: int = 0  # found unfinished (a killed run) and encoded again
    repaired: list[str] = field(default_factory=list)  # shards whose damaged FAISS file was rebuilt
    memory_peak: int = 0  # most bytes of decoded inputs held at once (predicted while decoding)
    shards: dict[str, int] = field(default_factory=dict)  # rows per shard, as published
    failures: list[Problem] = field(default_factory=list)  # inputs not indexed (each: path, stage, reason)
    skipped: list[Problem] = field(default_factory=list)  # hidden or special files, links out of the corpus
    ignored_files: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    published: bool = False
    error: str | None = None
    decoder_messages: list[str] = field(default_factory=list)  # FFmpeg's, kept here instead of printed
    traceback: str | None = None  # of an internal error (a bug) or MemoryError that stopped the run
    threads: dict[str, int] = field(default_factory=dict)  # of the encode stage: torch, decode threads; or Ray actors

    @property
    def exit_code(self) -> int:
        return {OK: EXIT_OK, WITH_FAILURES: EXIT_WITH_FAILURES, "skipped": EXIT_WITH_FAILURES}.get(
            self.status, EXIT_FAILED
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [p.to_dict() for p in self.failures]
        out["skipped"] = [p.to_dict() for p in self.skipped]
        return out

    def summary(self) -> str:
        lines = [
            f"index {self.index}: {sum(self.shards.values())} rows in {len(self.shards)} shard(s) "
            + ", ".join(f"{s} {n}" for s, n in sorted(self.shards.items())),
            f"items {self.items}: encoded {self.encoded_items} ({self.encoded_rows} rows), "
            f"unchanged {self.unchanged_items}, paths updated {self.relabeled_items}, removed {self.removed_items}"
            + (f", redone after an interrupted run {self.redone_items}" if self.redone_items else ""),
        ]
        if self.repaired:
            lines.append(f"rebuilt damaged FAISS file(s) of: {', '.join(self.repaired)}")
        if self.failures:
            lines.append(f"failed {len(self.failures)} (not indexed):")
            lines += [f"  {p.path} [{p.stage}] {p.reason}" for p in self.failures[:SHOWN]]
            if len(self.failures) > SHOWN:
                lines.append(f"  ... and {len(self.failures) - SHOWN} more (unite-search info {self.index} --json)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} (hidden, special files, links out of the corpus):")
            lines += [f"  {p.path} [{p.reason}]" for p in self.skipped[:SHOWN]]
            if len(self.skipped) > SHOWN:
                lines.append(f"  ... and {len(self.skipped) - SHOWN} more (unite-search info {self.index} --json)")
        if self.ignored_files:
            lines.append(f"ignored {self.ignored_files} file(s) of other types")
        # the model loads on its own thread while the first inputs decode: its time overlaps theirs
        times = ", ".join(f"{k} {v:.1f}s" + (" (beside decode)" if k == "load" else "")
                          for k, v in self.timings.items() if k != "load" or v)  # fmt: skip
        lines.append(f"time: {times}")
        if self.memory_peak:
            lines.append(f"memory: decoded inputs held at most {self.memory_peak / 2**20:.0f} MiB (predicted peaks)")
        if self.error:
            lines.append(f"FAILED: {self.error}")
        return "\n".join(lines)
