"""The model actors: load the models once, then run the per-image steps (steps.STEPS) on every
batch they are given.

    UpscaleActor  fused: every segment of the step list in one process (the fastest
                  arrangement on one machine: no pixel leaves the process)
    ModelActor    staged: the model segment only; handed-off Works in, upscaled Works out; the
                  CPU segments around it (steps.cpu_stage) run wherever Ray finds CPUs

Both are Ray Data callable classes: `__call__(batch) -> batch` is the only hot path.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from sr_batch import stats, steps
from sr_batch.handoff import from_arrow, to_arrow
from sr_batch.inference import Models
from sr_batch.settings import ActorSettings
from sr_batch.work import Work

log = logging.getLogger(__name__)

__all__ = ["UpscaleActor", "ModelActor"]


class _ModelActor:
    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self.models = Models(settings)
        self.segments = steps.segments()
        self.model = steps.build(self.segments[1], settings, self.models)


class UpscaleActor(_ModelActor):
    """Fused: manifest rows in, stats rows out; every step runs here."""

    def __init__(self, settings: ActorSettings) -> None:
        super().__init__(settings)
        self.before = steps.build(self.segments[0], settings)
        self.after = steps.build(self.segments[2], settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        works = steps.run(self.before, steps.begin(self.settings, batch, self.models.worker))
        self._model_and_after(works)
        self.models.report_setup(works)
        return stats.make_table([w.stats for w in works])

    def _model_and_after(self, works: list[Work]) -> None:
        """The model segment in chunks of about one model batch of tiles; a second thread runs the
        rest of the list (resize, measure, write) on chunk k while chunk k + 1 is in the model,
        so that CPU work overlaps inference (for a few large images too) and only two chunks'
        outputs are alive at once."""
        with ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
            pending = None
            for chunk in self.models.chunks(works):
                steps.run(self.model, chunk)
                if pending is not None:
                    pending.result()
                pending = finisher.submit(steps.run, self.after, chunk)
            if pending is not None:
                pending.result()


class ModelActor(_ModelActor):
    """Staged: handed-off Works (Arrow) in, upscaled Works (Arrow) out; streamed TIFFs are read,
    upscaled and written here in bounded memory (they never pass through the object store)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        began = time.perf_counter()
        works = from_arrow(batch)
        for chunk in self.models.chunks(works):
            steps.run(self.model, chunk)
        self.models.report_setup(works)
        log.debug("model actor: %d images in %.2f s", len(works), time.perf_counter() - began)
        return to_arrow(works)
