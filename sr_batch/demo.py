"""`sr-batch demo`: pictures made on the spot that show what super-resolution does, the job on
them, scored against their originals, and the HTML report.

    make_demo_set(root, count, size, scale)       originals (`demo_images.render_original`),
                                                  their bicubic downscales (the job's inputs)
                                                  and a manifest pairing them
    run_demo(root, ...)                           the set, the run, the report, the numbers
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sr_batch.demo_images import render_original


@dataclass(frozen=True)
class DemoSet:
    """A demo set on disk: inputs, their originals, and the manifest pairing them."""

    inputs: Path
    """The job's inputs: each original shrunk by `scale` with Pillow's bicubic."""
    originals: Path
    manifest: Path
    """Parquet with `uri` (an input) and `reference_uri` (its original)."""
    count: int
    size: tuple[int, int]
    """Input (height, width)."""
    scale: int


def make_demo_set(root: Path | str, count: int, size: tuple[int, int], scale: int = 2,
                  seed: int = 0) -> DemoSet:
    """Write `count` originals to ROOT/demo-reference, their bicubic downscales by `scale`
    (size = input (height, width)) to ROOT/demo-input, and ROOT/demo-manifest.parquet."""
    import pyarrow as pa

    from sr_batch import resample, storage
    from sr_batch.manifest import write_manifest

    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    root = Path(root).resolve()
    inputs, originals = root / "demo-input", root / "demo-reference"
    inputs.mkdir(parents=True, exist_ok=True)
    originals.mkdir(parents=True, exist_ok=True)
    height, width = size
    uris, references = [], []
    for i in range(count):
        original = render_original(height * scale, width * scale, seed + i, scale)
        name = f"demo{i:03d}.png"
        Image.fromarray(original).save(originals / name, compress_level=1)
        Image.fromarray(resample.downscale_bicubic(original, scale)).save(inputs / name, compress_level=1)
        uris.append(storage.to_uri(str(inputs / name)))
        references.append(storage.to_uri(str(originals / name)))
    manifest = root / "demo-manifest.parquet"
    write_manifest(pa.table({"uri": uris, "reference_uri": references}), str(manifest))
    return DemoSet(inputs, originals, manifest, count, (height, width), scale)


# --- the demo run ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoResult:
    """What the demo made and measured."""

    demo: DemoSet
    output: Path
    """The job's output root (images/, stats/, runs/)."""
    report: Path
    model: str
    ok: int
    failed: int
    wall_s: float
    output_mp_per_s: float
    psnr_y: float | None
    """Mean Y-PSNR of the ok outputs against their originals (dB)."""
    psnr_y_bicubic: float | None
    """The same for bicubic upscales of the same inputs."""
    ssim_y: float | None
    ssim_y_bicubic: float | None

    def summary_lines(self) -> list[str]:
        """A few plain lines: where things are, the headline numbers, what to try next."""
        demo, total = self.demo, self.ok + self.failed
        here = _shown_path
        lines = [f"sr-batch demo: {self.ok} of {total} images upscaled x{demo.scale} by {self.model} "
                 f"in {self.wall_s:.1f} s ({self.output_mp_per_s:.2f} MP/s out, Ray and model "
                 f"start-up included)"]
        if self.psnr_y is not None and self.psnr_y_bicubic is not None:
            gain = self.psnr_y - self.psnr_y_bicubic
            ssim = (f"; SSIM {self.ssim_y:.4f} vs {self.ssim_y_bicubic:.4f}"
                    if self.ssim_y is not None and self.ssim_y_bicubic is not None else "")
            lines.append(f"  vs the originals: Y-PSNR {self.psnr_y:.2f} dB, bicubic "
                         f"{self.psnr_y_bicubic:.2f} dB: {gain:+.2f} dB over bicubic{ssim}")
        lines += [
            f"  inputs:   {here(demo.inputs)}/ ({demo.count} PNGs of {demo.size[1]}x{demo.size[0]}, "
            f"shrunk from the originals in {here(demo.originals)}/)",
            f"  upscaled: {here(self.output / 'images')}/",
            f"  report:   {here(self.report)} (open it in a browser)",
            "next:",
        ]
        commands = [("sr-batch run YOUR_PHOTOS/ --output out/", "your own images"),
                    (f"sr-batch report {here(self.output)}", "this run's numbers as a table"),
                    ("sr-batch models", "the models, their speed and quality")]
        width = max(len(command) for command, _ in commands)
        lines += [f"  {command:<{width}}  # {why}" for command, why in commands]
        return lines


def run_demo(root: Path | str, count: int = 12, size: tuple[int, int] = (240, 320),
             model: str | None = "auto", scale: int = 2, echo=None) -> DemoResult:
    """Make the demo set under ROOT, upscale it into ROOT/upscaled (scored against the
    originals), and write ROOT/report.html."""
    from sr_batch import reports
    from sr_batch.config import JobConfig
    from sr_batch.pipeline import echo_stderr, run_job

    echo = echo or echo_stderr
    demo = make_demo_set(root, count, size, scale)
    pictures = "picture" if count == 1 else "pictures"
    echo(f"made {count} demo {pictures}: originals in {_shown_path(demo.originals)}/, "
         f"inputs (x{scale} smaller) in {_shown_path(demo.inputs)}/")
    output = Path(root).resolve() / "upscaled"
    # force: a second demo into the same folder runs again rather than skipping every image.
    run = run_job(JobConfig(sources=(str(demo.manifest),), output=str(output), model=model,
                            scale=scale, force=True), echo)
    db = reports.open_stats(str(output))
    try:
        report = reports.build_report(db, run=run.run_id, plots=True)
        report_path = Path(root).resolve() / "report.html"
        reports.write_report(report, "html", str(report_path))
        means = db.rows("SELECT avg(psnr_y) AS psnr_y, avg(psnr_y_bicubic) AS psnr_y_bicubic, "
                        "avg(ssim_y) AS ssim_y, avg(ssim_y_bicubic) AS ssim_y_bicubic "
                        "FROM sel WHERE status = 'ok' AND isfinite(psnr_y) AND isfinite(psnr_y_bicubic)")[0]
        model_name = report.tables["summary"].column("model")[0].as_py() or "?"
        if model == "auto":  # what each image got
            got = db.rows("SELECT model || coalesce(' --denoise ' || denoise, '') AS got, count(*) AS n "
                          "FROM sel WHERE status = 'ok' GROUP BY 1 ORDER BY n DESC, got")
            model_name = "auto (" + ", ".join(f"{r['got']}: {r['n']}" for r in got) + ")"
    finally:
        db.con.close()
    return DemoResult(demo=demo, output=output, report=report_path, model=model_name,
                      ok=run.counts.get("ok", 0), failed=run.counts.get("failed", 0),
                      wall_s=run.wall_s, output_mp_per_s=run.output_megapixels_per_s, **means)


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (as the user typed it)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
