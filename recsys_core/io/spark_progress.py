"""Progress of long Spark jobs in the driver's log: Spark's UI and console bar are off here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# How often a running job reports; a line is written only when a count moved since the last one.
PROGRESS_SECONDS = 30.0


@contextmanager
def spark_progress(spark, what: str, every: float = PROGRESS_SECONDS) -> Iterator[None]:
    """Log the task counts of the active stages every ``every`` seconds while the block runs."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    started = time.monotonic()

    def report() -> None:
        last = None
        while not stop.wait(every):
            stages = [info for info in map(tracker.getStageInfo, tracker.getActiveStageIds()) if info is not None]
            counts = tuple(
                (s.stageId, s.numCompletedTasks, s.numActiveTasks, s.numTasks) for s in sorted(stages, key=lambda s: s.stageId)
            )
            if counts and counts != last:
                done = ", ".join(f"stage {sid}: {ok}/{total} tasks done, {running} running" for sid, ok, running, total in counts)
                log.info("%s: %s (%.0fs)", what, done, time.monotonic() - started)
            last = counts

    thread = threading.Thread(target=report, name=f"spark-progress-{what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
