"""Plans: dry runs (reasons from real runs, nothing written, plan manifests, the time estimate)
and the column-wise planning of large manifests held to the row-by-row rules."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sr_batch import manifest, storage
from sr_batch.config import JobConfig
from sr_batch.errors import ConfigError, PathEscapeError
from sr_batch.layout import OutLayout
from sr_batch.naming import plan_outputs
from sr_batch.pipeline import run_job
from sr_batch.plan import plan_run
from sr_batch.preview import dry_run, find_rate

from conftest import png_bytes, scene

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"a": (20, 24), "b": (16, 30), "c": (18, 18), "d": (26, 22), "e": (12, 40)}
CHANGED_B = (30, 16)


def quiet(line: str) -> None:
    pass


def written(path: Path) -> tuple[bytes, int, int]:
    """A file's bytes, mtime and inode: what a rewrite, even with the same bytes, changes."""
    return path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: what a write would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))} if root.exists() else {}


def save(folder: Path, name: str, size: tuple[int, int] | None = None, seed: int = 0) -> None:
    height, width = size or SIZES[name]
    (folder / f"{name}.png").write_bytes(png_bytes(scene(height, width, seed=seed)))


def write_manifest(path: Path, src: Path, names: tuple[str, ...], extra: list[dict] = ()) -> str:
    """The listing of `src` (sizes and mtimes, as `sr-batch manifest` gives them) cut to
    `names`, plus `extra` rows, as a Parquet manifest."""
    table = manifest.build_manifest([str(src)])
    table = table.filter(pc.is_in(table.column("relative_path"),
                                          value_set=pa.array([f"{n}.png" for n in names])))
    if extra:
        table = pa.concat_tables([table, manifest.validate_manifest(pa.Table.from_pylist(extra), "extra")])
    manifest.write_manifest(table, str(path))
    return str(path)


@pytest.fixture
def runs(ray_local, tmp_path) -> tuple[Path, JobConfig]:
    """Two real runs (bicubic), then changes, so that a dry run meets every reason.

    run r1 (--format keep): a, b, c ok; bad.png fails (not an image).
    run r2 (--format png):  d ok, under other settings than the dry run's (keep).
    then b is rewritten (another size) and e appears. The dry run's manifest also has a row
    whose relative_path leaves OUT/images, and a last row whose output_uri is e's output.
    """
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a", "b", "c", "d"):
        save(src, name)
    (src / "bad.png").write_bytes(b"not a png at all")
    first = write_manifest(tmp_path / "r1.parquet", src, ("a", "b", "c", "bad"))
    result = run_job(JobConfig(sources=(first,), output=str(out), model="bicubic", run_id="r1"), echo=quiet)
    assert result.counts == {"ok": 3, "failed": 1}
    second = write_manifest(tmp_path / "r2.parquet", src, ("d",))
    result = run_job(JobConfig(sources=(second,), output=str(out), model="bicubic", format="png",
                               run_id="r2"), echo=quiet)
    assert result.counts == {"ok": 1}

    save(src, "b", CHANGED_B, seed=5)
    save(src, "e")
    planned = write_manifest(tmp_path / "dry.parquet", src, ("a", "b", "c", "d", "e", "bad"), [
        {"uri": str(src / "g.png"), "relative_path": "../escape.png", "output_uri": None},
        {"uri": str(src / "f.png"), "relative_path": "f.png", "output_uri": str(out / "images" / "e.png")}])
    return out, JobConfig(sources=(planned,), output=str(out), model="bicubic", dry_run=True)


@pytest.mark.slow
def test_dry_run_gives_each_reason_from_real_runs(runs):
    out, config = runs
    before = listing(out)
    lines: list[str] = []

    preview = dry_run(config, lines.append)

    assert listing(out) == before  # nothing written: no stats, no run record, no lock
    plan = preview.plan
    reasons = dict(zip(plan.todo.column("relative_path").to_pylist(), plan.reasons.to_pylist()))
    errors = dict(zip(plan.todo.column("relative_path").to_pylist(),
                      plan.todo.column("plan_error_type").to_pylist()))
    assert reasons == {"b.png": "changed_source", "d.png": "changed_settings", "e.png": "new",
                       "bad.png": "failed_before", "../escape.png": "new", "f.png": "new"}
    assert errors == {"b.png": None, "d.png": None, "e.png": None, "bad.png": None,
                      "../escape.png": "path_escape", "f.png": "output_collision"}
    assert preview.to_run == {"changed_source": 1, "changed_settings": 1, "new": 1, "failed_before": 1}
    assert preview.failing == {"path_escape": 1, "output_collision": 1}
    assert {Path(u).name for u in plan.skipped.column("source_uri").to_pylist()} == {"a.png", "c.png"}
    assert set(plan.skipped.column("notes").to_pylist()) == {"unchanged since run r1"}
    # Megapixels from the header sample (b, d and e; bad.png has no header), times 4 to run.
    pixels = [CHANGED_B[0] * CHANGED_B[1], SIZES["d"][0] * SIZES["d"][1], SIZES["e"][0] * SIZES["e"][1]]
    assert sorted(plan.sample_pixels) == sorted(pixels)
    assert preview.input_megapixels == pytest.approx(sum(pixels) / 3 * 4 / 1e6)
    assert preview.output_megapixels == pytest.approx(preview.input_megapixels * 4)
    assert lines[:4] == [
        "dry run of sr-batch run: 8 images listed; nothing written",
        "  would run 4: 1 new, 1 changed source, 1 changed settings, 1 failed before",
        "  would fail in planning 2: 1 output_collision, 1 path_escape",
        "  would skip 2: unchanged since earlier runs with these settings"]
    assert lines[4].endswith("MP out (x2), from 3 of 4 sampled headers")


@pytest.mark.slow
def test_dry_run_estimate_uses_a_recorded_rate_of_the_model(runs):
    out, config = runs
    lines: list[str] = []
    r1 = json.loads((out / "runs" / "r1.json").read_text())

    preview = dry_run(config, lines.append)

    # r1 wrote more megapixels than r2 (three images against one): its own rate sizes the estimate.
    assert preview.rate.run_id == "r1"
    assert preview.rate.output_megapixels_per_s == r1["output_megapixels_per_s"] > 0
    assert preview.estimate_s == pytest.approx(preview.output_megapixels / r1["output_megapixels_per_s"])
    assert (f"at {r1['output_megapixels_per_s']:.2f} MP/s out, the rate of run r1 (bicubic x2: "
            in lines[5])
    # No run of this model at x3 recorded a rate: the dry run says so.
    other = dry_run(config.replace(scale=3), lines.append)
    assert other.rate is None and other.estimate_s is None
    assert any(line.startswith("  no time estimate: no finished run of bicubic x3") for line in lines)


@pytest.mark.slow
def test_dry_run_with_force_runs_every_row(runs):
    _, config = runs
    preview = dry_run(config.replace(force=True), quiet)
    assert preview.to_run == {"forced": 6} and preview.plan.skipped.num_rows == 0


def test_find_rate_takes_the_largest_finished_run_of_the_same_model_and_scale(tmp_path):
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    records = {  # run: status, model, scale, MP/s out, wall s, finished
        "large": ("finished", "residual", 2, 3.0, 100.0, "2026-01-01T00:00:00+00:00"),
        "small": ("finished", "residual", 2, 5.0, 10.0, "2026-01-03T00:00:00+00:00"),
        "running": ("running", "residual", 2, None, None, None),
        "failed": ("failed", "residual", 2, 50.0, 1000.0, "2026-01-04T00:00:00+00:00"),
        "x4": ("finished", "residual", 4, 7.0, 1000.0, "2026-01-05T00:00:00+00:00"),
        "bicubic": ("finished", "bicubic", 2, 90.0, 1000.0, "2026-01-06T00:00:00+00:00"),
        "nothing-ran": ("finished", "residual", 2, 0.0, 1000.0, "2026-01-07T00:00:00+00:00"),
    }
    for run_id, (status, model, scale, rate, wall_s, finished) in records.items():
        (runs / f"{run_id}.json").write_text(json.dumps({
            "run_id": run_id, "status": status, "config": {"scale": scale},
            "model": {"name": model, "scale": scale}, "output_megapixels_per_s": rate,
            "wall_s": wall_s, "finished_at": finished}))
    (runs / "broken.json").write_text("{not json")
    layout = OutLayout.of(str(tmp_path / "out"))
    rate = find_rate(layout, "residual", 2)
    assert (rate.run_id, rate.output_megapixels_per_s, rate.output_megapixels) == ("large", 3.0, 300.0)
    assert find_rate(layout, "residual", 3) is None
    assert find_rate(OutLayout.of(str(tmp_path / "elsewhere")), "residual", 2) is None


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    code = ("import sys; from sr_batch.cli import main; code = main(sys.argv[1:]); "
            "print('ray imported' if 'ray' in sys.modules else 'no ray', file=sys.stderr); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "RAY_ADDRESS": ""})


def test_cli_dry_runs_write_only_the_plan_manifest_and_start_no_ray(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a", "b", "c"):
        save(src, name)
    plan_file = tmp_path / "plan" / "todo.parquet"

    plain = run_cli("run", str(src), "--output", str(out), "--model", "bicubic", "--dry-run")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "would run 3: 3 new" in plain.stderr and "no ray" in plain.stderr
    assert not out.exists()  # not even OUT itself

    asked = run_cli("run", str(src), "--output", str(out), "--model", "bicubic", "--dry-run",
                    "--plan-manifest", str(plan_file))
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert not out.exists()
    assert f"wrote the 3 rows to run to file://{plan_file}" in asked.stderr
    written = pq.read_table(plan_file)
    assert written.column("reason").to_pylist() == ["new"] * 3
    assert manifest.read_manifest(str(plan_file)).column("uri").to_pylist() == [
        f"file://{src}/{n}.png" for n in ("a", "b", "c")]

    nightly = run_cli("nightly", str(src), "--output", str(out), "--model", "bicubic",
                      "--address", "http://127.0.0.1:9", "--dry-run", "--plan-manifest", str(tmp_path / "n.jsonl"))
    assert nightly.returncode == 0, nightly.stderr[-2000:]
    assert nightly.stderr.startswith(
        "dry run of sr-batch nightly: 3 images listed; nothing submitted or written but the plan manifest")
    assert "no ray" in nightly.stderr and not out.exists()  # no lock, no OUT/manifests, no job
    assert [json.loads(line)["reason"] for line in (tmp_path / "n.jsonl").read_text().splitlines()] == ["new"] * 3


def test_cli_plan_manifest_needs_a_dry_run_and_a_manifest_name(tmp_path):
    without = run_cli("run", str(tmp_path), "--output", str(tmp_path / "o"), "--plan-manifest", "p.parquet")
    assert without.returncode == 2
    assert without.stderr.splitlines()[0] == "sr-batch: error: --plan-manifest writes the plan of a dry run: add --dry-run"
    with pytest.raises(ConfigError, match="--plan-manifest must end in .parquet"):
        JobConfig(sources=("x",), output="o", dry_run=True, plan_manifest="plan.txt")


def test_a_dry_run_config_is_never_executed(tmp_path):
    from sr_batch.nightly import run_nightly

    config = JobConfig(sources=(str(tmp_path),), output=str(tmp_path / "out"), dry_run=True)
    with pytest.raises(ConfigError, match="a dry run only plans"):
        run_job(config, echo=quiet)
    with pytest.raises(ConfigError, match="a dry run only plans"):
        run_nightly(config, "http://127.0.0.1:9", [])
    assert not (tmp_path / "out").exists()


# --- planning at scale: column-wise, as the row-by-row rules decide ---------------------

TRICKY = ["a.png", "a.gif", "a.PNG", "a.jpg", "a.jpeg", "a.gif.png", "b.tif", "b.tiff", "b.png",
          "b.tif.png", "c", "c.png", "d.webp", "d.png", ".hidden.png", "sub/.png", "x/../y.png",
          "../e.png", "/abs.png", "f//g.png", "./h.png", "i/./j.png", "k.png/", "q?x.png", "r#.png",
          "s::t.png", "u\\v.png", "link/l.png", "link/sub/m.png", "sub/n.JPG", "sub/n.png",
          "sub/n.jpg.png", "o.bmp", "o.png", "p.", "p.png", "t.tif", "t.png", "t.tif.png", "w.JPEG",
          "w.png", "ü/ñ.png", "ü/ñ.gif", "z.x.y.png", "dir.v/file", "dir.v/file.png", "sp ace.png",
          "nul\x00dir/x.png", "o\x00k.png"]


@pytest.mark.parametrize("seed", range(6))
def test_column_wise_names_are_the_row_by_row_names(tmp_path, seed):
    """Collisions, fallbacks (`a.gif.png`), output_uris, escapes and a link out of OUT/images,
    mixed into plain rows: every column equals the row-by-row rules' answer."""
    rng = random.Random(seed)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "images" / "link")
    relatives = [f"plain/{i}.png" for i in range(300)] + [rng.choice(TRICKY) for _ in range(60)]
    rng.shuffle(relatives)
    relatives[5] = "../e.png"
    overrides = [None] * len(relatives)
    for i in rng.sample(range(len(relatives)), 12):
        overrides[i] = rng.choice([f"file://{out}/images/a.png", f"file://{out}/images/plain/7.png",
                                   f"file://{out}/images/a.gif.png", f"file://{tmp_path}/elsewhere/x.png",
                                   f"file://{out}/images/z.txt", f"file://{out}/images/link/q.png", ""])
    overrides[0] = overrides[1] = f"file://{out}/images/same.png"
    table = pa.table({"uri": [f"file:///src/{i}" for i in range(len(relatives))],
                      "relative_path": relatives, "output_uri": overrides})
    layout = OutLayout.of(str(out))
    for requested in ("keep", "png", "jpeg", "webp", "tiff"):
        fast = plan_outputs(table, layout, requested)
        exact = plan_outputs(table, OutLayout.of(str(out)), requested, one_by_one=True)
        assert fast.equals(exact), requested
        # the hard cases did happen
        assert {"path_escape", "output_collision"} <= set(fast.column("plan_error_type").to_pylist())


def test_column_wise_names_of_a_large_plain_manifest(tmp_path):
    """Many rows in many folders, and an `a.gif` beside its `a.png`: it keeps its extension,
    unless `a.gif.png` is another file's own name (then it fails): as the rules say."""
    relatives = [f"d{i // 100}/img{i}.png" for i in range(20000)] + [
        "d5/img500.gif", "d3/img300.gif", "d3/img300.gif.png"]
    table = pa.table({"uri": [f"file:///src/{r}" for r in relatives], "relative_path": relatives,
                      "output_uri": pa.nulls(len(relatives), pa.string())})
    layout = OutLayout.of(str(tmp_path / "out"))
    planned = plan_outputs(table, layout, "keep")
    uris = planned.column("output_uris").to_pylist()
    errors = planned.column("plan_error_type").to_pylist()
    images = f"file://{tmp_path}/out/images"
    assert uris[0] == [f"{images}/d0/img0.png"] and uris[300] == [f"{images}/d3/img300.png"]
    assert uris[-3] == [f"{images}/d5/img500.gif.png"]
    assert uris[-2] is None and errors[-2] == "output_collision"
    assert uris[-1] == [f"{images}/d3/img300.gif.png"]
    assert errors.count(None) == len(relatives) - 1
    assert planned.equals(plan_outputs(table, layout, "keep", one_by_one=True))


PATHS = ["file:///a/b/c.png", "/a/b/d.png", "rel/x.png", "~/y.png", "file://rel2/z.png",
         "s3://bk/p/q.png", "file:///a//b/e.png", "file:///a/./b/f.png", "/a/b/../g.png",
         "file:///a/b/h.png/", "http://h/x.png?a=b", "/ü/ñ.png", "file:///", "file://", "/",
         "/a/b/./i.png", "memory://m/x.png", "/a/b/c.png.png", "/a/b/.", "/a/b/..", "x", None]


def test_uris_column_wise_are_to_uri_of_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.to_uris(pa.array(PATHS, pa.string())).to_pylist() == [
        None if p is None else storage.to_uri(p) for p in PATHS]


def test_manifest_ids_and_paths_column_wise(tmp_path, monkeypatch):
    """The validated columns are those of the row-by-row definitions."""
    monkeypatch.chdir(tmp_path)
    uris = [p for p in PATHS if p]
    table = manifest.validate_manifest(pa.table({
        "uri": uris, "image_id": [None if i % 3 else f"id{i}" for i in range(len(uris))],
        "reference_uri": ["" if i % 2 else uris[-i] for i in range(len(uris))],
        "etag": list(range(len(uris)))}), "test")
    canonical = [storage.to_uri(u) for u in uris]
    assert table.column("uri").to_pylist() == canonical
    assert table.column("image_id").to_pylist() == [
        f"id{i}" if i % 3 == 0 else manifest.image_id_for(u) for i, u in enumerate(canonical)]
    assert table.column("reference_uri").to_pylist() == [
        None if i % 2 else storage.to_uri(uris[-i]) for i in range(len(uris))]
    assert table.column("etag").to_pylist() == [str(i) for i in range(len(uris))]
    local = manifest.validate_manifest(pa.table({"uri": ["/data/x/a.png", "/data/x/y/b.png", "/data/z/c.png"]}), "t")
    assert local.column("relative_path").to_pylist() == ["x/a.png", "x/y/b.png", "z/c.png"]


@pytest.mark.slow
def test_a_plan_manifest_keeps_the_names_the_full_plan_gave(ray_local, tmp_path):
    """nightly and --plan-manifest submit only the rows to do; they carry their planned names,
    so `a.gif` (changed) keeps `a.gif.png` and never takes the name of `a.png` (skipped)."""
    from PIL import Image

    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    Image.fromarray(scene(20, 24, seed=1)).save(source / "a.png")
    Image.fromarray(scene(20, 24, seed=2)).save(source / "a.gif")
    config = JobConfig(sources=(str(source),), output=str(out), model="bicubic")
    assert run_job(config.replace(run_id="first"), echo=lambda line: None).counts == {"ok": 2}
    first_png = written(out / "images" / "a.png")
    first_gif = (out / "images" / "a.gif.png").read_bytes()

    Image.fromarray(scene(20, 24, seed=3)).save(source / "a.gif")  # only a.gif changes
    os.utime(source / "a.gif", (1, 1))
    plan_file = tmp_path / "todo.parquet"
    dry_run(config.replace(dry_run=True, plan_manifest=str(plan_file)), echo=lambda line: None)
    todo = pq.read_table(plan_file)
    assert todo.column("relative_path").to_pylist() == ["a.gif"]
    assert json.loads(todo.column("planned_outputs")[0].as_py()) == {"png": storage.to_uri(str(out / "images" / "a.gif.png"))}

    again = run_job(config.replace(sources=(str(plan_file),), run_id="second"), echo=lambda line: None)
    assert again.counts == {"ok": 1}
    # Untouched, not rewritten with the same bytes (a rewrite is a new file moved into place).
    assert written(out / "images" / "a.png") == first_png
    assert (out / "images" / "a.gif.png").read_bytes() != first_gif  # redone from the new a.gif
    rows = {r["run_id"]: r for r in pq.read_table(out / "stats").to_pylist() if r["source_uri"].endswith("a.gif")}
    assert rows["second"]["output_uri"].endswith("/images/a.gif.png")


def test_a_nul_byte_in_a_folder_or_file_name_fails_that_row_only(tmp_path):
    """`nuldir\x00/x.png` and `o\x00k.png` as relative paths (and a NUL in an output_uri): those
    rows fail as path_escape in planning, the others keep their names."""
    out = tmp_path / "out"
    table = pa.table({"uri": [f"file:///src/{i}.png" for i in range(4)],
                      "relative_path": ["nuldir\x00/x.png", "o\x00k.png", "fine.png", "other.png"],
                      "output_uri": [None, None, None, f"file://{out}/images/b\x00d.png"]})
    planned = plan_outputs(table, OutLayout.of(str(out)), "keep")
    assert planned.column("plan_error_type").to_pylist() == ["path_escape", "path_escape", None, "path_escape"]
    assert planned.column("output_uris").to_pylist()[2] == [f"file://{out}/images/fine.png"]


@pytest.mark.parametrize("folder", ["images", "runs", "stats", "manifests", "stats/run_id=r1"])
def test_an_out_folder_that_is_a_link_elsewhere_stops_the_plan(tmp_path, folder):
    """OUT/images (or runs, stats, manifests, the run's stats folder) as a link to a folder
    outside OUT: the plan refuses the run (exit 2) before anything is written."""
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    save(src, "a")
    (out / folder).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, out / folder)
    config = JobConfig(sources=(str(src),), output=str(out), model="bicubic", run_id="r1")
    with pytest.raises(ConfigError, match=f"{folder} is a link .*writes only inside"):
        plan_run(config)
    # OUT itself may be a link: its folders are then inside it.
    os.unlink(out / folder)
    os.symlink(out, tmp_path / "out-link")
    assert plan_run(config.replace(output=str(tmp_path / "out-link"))).todo.num_rows == 1
    assert list(elsewhere.iterdir()) == []


def test_a_link_made_in_place_of_out_images_after_planning_is_still_caught(tmp_path):
    """The writer's own check (not cached) finds OUT/images replaced by a link after planning."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "images").mkdir(parents=True)
    elsewhere.mkdir()
    layout = OutLayout.of(str(out))
    uri = layout.image_path("a.png")
    os.rmdir(out / "images")
    os.symlink(elsewhere, out / "images")
    with pytest.raises(PathEscapeError, match="through a link"):
        layout.check_output(uri, cached=False)


def test_an_outscale_no_pass_of_the_models_reaches_is_a_config_error(tmp_path):
    """With only x2 models of a name (a user's file has one scale), --outscale 9 needs four x2
    passes: refused in the plan, before any image."""
    from sr_batch.sizing import check_reachable, OutputSize

    check_reachable(OutputSize(outscale=8), 2, (2,))
    with pytest.raises(ConfigError, match="--outscale 9 is more than x8, the most that 3 model passes reach from x2"):
        check_reachable(OutputSize(outscale=9), 2, (2,))

