"""The one object that knows what lives where under OUT.

    OUT/images/...                         upscaled images (the only place outputs land)
    OUT/stats/run_id=<run_id>/part-*.parquet   one stats row per manifest row
    OUT/runs/<run_id>.json                 the run record
    OUT/manifests/<run_id>.parquet         what a nightly run submitted
    OUT/nightly.lock                       held by nightly and `run --lock`

An output path is accepted only under OUT/images: by its name, and on local
disks also after following links, so neither a manifest row nor a symlink in
OUT can send a write onto the job's own files or outside OUT. OUT itself may be
a link; its folders (images, stats, runs, manifests, a run's stats folder) may
not lead elsewhere: a run refuses to start on such an OUT (`check_folders`).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field

from sr_batch import storage
from sr_batch.errors import ConfigError, PathEscapeError


@dataclass(frozen=True)
class OutLayout:
    """Paths of one output root (a URI)."""

    root: str
    _real_dirs: dict = field(default_factory=dict, compare=False, repr=False)
    """Local directories already resolved through their links (path -> real path)."""

    @classmethod
    def of(cls, output: str) -> "OutLayout":
        return cls(storage.to_uri(output).rstrip("/"))

    @property
    def images(self) -> str:
        return storage.join(self.root, "images")

    @property
    def stats(self) -> str:
        return storage.join(self.root, "stats")

    def stats_run(self, run_id: str) -> str:
        return storage.join(self.stats, f"run_id={run_id}")

    @property
    def runs(self) -> str:
        return storage.join(self.root, "runs")

    def run_record(self, run_id: str) -> str:
        return storage.join(self.runs, f"{run_id}.json")

    @property
    def manifests(self) -> str:
        return storage.join(self.root, "manifests")

    def manifest(self, run_id: str) -> str:
        return storage.join(self.manifests, f"{run_id}.parquet")

    def probe(self, sha256: str) -> str:
        """Where the probe of a model file with this SHA-256 is cached (model_probe.read_probe)."""
        return storage.join(self.root, "probes", f"{sha256}.json")

    @property
    def lock(self) -> str:
        return storage.join(self.root, "nightly.lock")

    def image_path(self, relative: str) -> str:
        """URI of `relative` under OUT/images; PathEscapeError if it could leave it."""
        return self.check_output(storage.resolve_inside(self.images, relative))

    def check_output(self, uri: str, cached: bool = True) -> str:
        """`uri` if it lies under OUT/images (same filesystem; on local disks after following
        links), else PathEscapeError. `cached` reuses directories resolved before (planning);
        a writer passes False, so a link made after planning is still caught."""
        uri = storage.check_inside(self.images, storage.to_uri(uri))
        fs, path = storage.get_fs(uri)
        if storage.is_local(fs):
            real = self.real_outside(posixpath.dirname(path), cached)
            if real is not None:
                raise PathEscapeError(f"output {storage.display(uri)} leads outside {storage.display(self.images)} "
                                      f"through a link (to {storage.display(real)})")
        return uri

    def real_outside(self, directory: str, cached: bool = True) -> str | None:
        """The real path of a local `directory` (a path, no protocol) under OUT/images where,
        through a link, it lies outside OUT/images; None where it stays inside."""
        # OUT's real path, then `images`: were OUT/images itself a link, its real path differs.
        root = self._real_dir(storage.get_fs(self.root)[1], cached) + "/images"
        real = self._real_dir(directory, cached)
        return None if real == root or real.startswith(root + "/") else real

    def _real_dir(self, path: str, cached: bool = True) -> str:
        """The real path of a local directory, following links in the part that exists."""
        real = self._real_dirs.get(path) if cached else None
        if real is None:
            real = self._real_dirs[path] = os.path.realpath(path)
        return real

    def check_folders(self, run_id: str | None = None) -> None:
        """ConfigError where one of OUT's own folders (and `run_id`'s stats folder) exists on a
        local disk as a link, or otherwise leads outside OUT: the job writes only inside OUT."""
        fs, root = storage.get_fs(self.root)
        if not storage.is_local(fs):
            return
        real_root = os.path.realpath(root)
        folders = [self.images, self.stats, self.runs, self.manifests]
        if run_id is not None:
            folders.append(self.stats_run(run_id))
        for uri in folders:
            path = storage.get_fs(uri)[1]
            if not os.path.lexists(path):
                continue
            expected = real_root + path[len(root):]
            if os.path.islink(path) or os.path.realpath(path) != expected:
                raise ConfigError(f"{storage.display(uri)} is a link (to {storage.display(os.path.realpath(path))}); "
                                  f"sr-batch writes only inside {storage.display(self.root)}: make it a folder")
