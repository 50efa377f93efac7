"""Manifests: listing directories, globs and fsspec URIs; reading and writing all three formats."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import socket
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import bounded, png_bytes, scene
from sr_batch.errors import ManifestError
from sr_batch.manifest import (MANIFEST_SCHEMA, build_manifest, image_id_for, load_sources,
                               read_manifest, write_manifest)


@pytest.fixture
def mixed_dir(image_dir):
    """image_dir plus files that are not images, and an empty subfolder."""
    (image_dir / "README.txt").write_text("not an image")
    (image_dir / "sub" / "notes.json").write_text("{}")
    (image_dir / "sub" / "photo.JPG").write_bytes(_jpeg_bytes())
    (image_dir / "empty").mkdir()
    return image_dir


@pytest.fixture
def memory_root():
    """A fresh folder on fsspec's process-wide memory filesystem, removed afterwards."""
    root = f"memory://manifest-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene(12, 16, seed=7)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _by_relative(table: pa.Table) -> dict[str, dict]:
    return {row["relative_path"]: row for row in table.to_pylist()}


# --- building from sources -------------------------------------------------------------


def test_build_from_directory_lists_images_recursively(mixed_dir):
    table = build_manifest([str(mixed_dir)])

    assert table.schema == MANIFEST_SCHEMA
    rows = _by_relative(table)
    # .txt and .json are skipped; the upper-case .JPG extension counts.
    assert sorted(rows) == ["im0.png", "im1.png", "im2.png", "sub/im3.png", "sub/im4.png",
                            "sub/photo.JPG"]
    for relative, row in rows.items():
        path = mixed_dir / relative
        assert row["uri"] == "file://" + str(path)
        assert row["image_id"] == image_id_for(row["uri"])
        assert row["bytes"] == path.stat().st_size
        expected_mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)
        assert abs(row["mtime"] - expected_mtime) < dt.timedelta(milliseconds=1)
        assert row["reference_uri"] is None and row["output_uri"] is None


def test_build_from_glob(mixed_dir):
    table = build_manifest([f"{mixed_dir}/**/*.png"])

    rows = _by_relative(table)
    # `**` matches zero or more folders, so top-level PNGs are in; the JPEG is not.
    assert sorted(rows) == ["im0.png", "im1.png", "im2.png", "sub/im3.png", "sub/im4.png"]
    assert rows["sub/im4.png"]["uri"] == f"file://{mixed_dir}/sub/im4.png"


def test_build_from_glob_relative_to_the_folder_before_the_wildcard(mixed_dir):
    table = build_manifest([f"{mixed_dir}/sub/im*.png"])

    assert sorted(table.column("relative_path").to_pylist()) == ["im3.png", "im4.png"]


def test_existing_folder_with_glob_characters_is_taken_literally(tmp_path):
    folder = tmp_path / "scans[2019]"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(scene(6, 6)))

    table = build_manifest([str(folder)])

    assert table.column("uri").to_pylist() == [f"file://{folder}/a.png"]
    assert table.column("relative_path").to_pylist() == ["a.png"]


def test_build_from_a_single_file(image_dir):
    table = build_manifest([str(image_dir / "sub" / "im3.png")])

    assert table.column("relative_path").to_pylist() == ["im3.png"]
    assert table.column("uri").to_pylist() == [f"file://{image_dir}/sub/im3.png"]


def test_build_from_memory_uris(memory_root):
    data = {"a.png": png_bytes(scene(8, 8, 1)), "deep/er/b.png": png_bytes(scene(9, 5, 2)),
            "c.txt": b"skip me"}
    for name, payload in data.items():
        with fsspec.open(f"{memory_root}/{name}", "wb") as handle:
            handle.write(payload)

    table = build_manifest([memory_root])

    rows = _by_relative(table)
    assert sorted(rows) == ["a.png", "deep/er/b.png"]
    for relative, row in rows.items():
        assert row["uri"].startswith("memory://")
        assert row["uri"].endswith(relative)
        assert row["bytes"] == len(data[relative])
        assert row["mtime"] is not None
        assert row["image_id"] == image_id_for(row["uri"])
        # The listed URI reads back the very file that was written.
        with fsspec.open(row["uri"], "rb") as handle:
            assert handle.read() == data[relative]


def test_image_id_is_stable_across_builds(image_dir):
    first = build_manifest([str(image_dir)])
    second = build_manifest([str(image_dir)])

    assert first.column("image_id").to_pylist() == second.column("image_id").to_pylist()
    ids = first.column("image_id").to_pylist()
    assert len(set(ids)) == len(ids) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # The id depends on the URI only, not on the file's contents.
    assert image_id_for("file:///x/a.png") == image_id_for("file:///x/a.png")
    assert image_id_for("file:///x/a.png") != image_id_for("file:///x/b.png")


def test_build_from_missing_source_fails(tmp_path):
    with pytest.raises(ManifestError, match="source not found"):
        build_manifest([str(tmp_path / "nope")])


def test_source_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ManifestError, match="no images .* found under"):
        build_manifest([str(tmp_path)])
    with pytest.raises(ManifestError, match="no images"):
        build_manifest([str(tmp_path / "*.png")])




@contextlib.contextmanager
def special_files(folder):
    """A FIFO, a Unix socket and a symlink to the FIFO, all named like images; removed after
    (a reader stuck in the FIFO's open() is released first)."""
    fifo, link = folder / "fifo.png", folder / "link-to-fifo.png"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(folder)  # a relative name keeps the socket path under the 108-byte limit
    try:
        sock.bind("s.png")
    finally:
        os.chdir(cwd)
    try:
        yield
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        for path in (fifo, link, folder / "s.png"):
            path.unlink()


def test_listing_skips_fifos_sockets_and_devices_without_opening_them(image_dir, caplog):
    (image_dir / "sub" / "link-to-im0.png").symlink_to(image_dir / "im0.png")

    with special_files(image_dir), caplog.at_level(logging.WARNING, logger="sr_batch.manifest"):
        table = bounded(lambda: build_manifest([str(image_dir)]), limit_s=30)

    assert sorted(_by_relative(table)) == ["im0.png", "im1.png", "im2.png", "sub/im3.png",
                                           "sub/im4.png", "sub/link-to-im0.png"]
    lines = [r.getMessage() for r in caplog.records if r.name == "sr_batch.manifest"]
    assert lines == ["skipped 3 file(s): 3 not a regular file (FIFO, socket or device)"]


def test_a_fifo_given_as_the_source_is_refused(tmp_path):
    with special_files(tmp_path):
        with pytest.raises(ManifestError, match="not a regular file or a directory"):
            bounded(lambda: build_manifest([str(tmp_path / "fifo.png")]), limit_s=30)


def test_listing_counts_files_without_an_image_extension(mixed_dir, caplog):
    (mixed_dir / "scan0001").write_bytes(png_bytes(scene(8, 8)))  # an image, by its content

    with caplog.at_level(logging.WARNING, logger="sr_batch.manifest"):
        table = build_manifest([str(mixed_dir)])

    assert "scan0001" not in _by_relative(table)
    lines = [r.getMessage() for r in caplog.records if r.name == "sr_batch.manifest"]
    assert len(lines) == 1
    assert lines[0].startswith("skipped 3 file(s): 3 without an image extension (.png, .jpg")


def test_folder_of_extensionless_images_says_they_were_skipped(tmp_path):
    (tmp_path / "scan0001").write_bytes(png_bytes(scene(8, 8)))

    with pytest.raises(ManifestError, match=r"no images .* found under .*\(skipped 1 file\(s\): 1 without"):
        build_manifest([str(tmp_path)])


def test_a_manifest_row_may_name_an_extensionless_image(tmp_path):
    from sr_batch import storage
    from sr_batch.decode import decode_image

    (tmp_path / "scan0001").write_bytes(png_bytes(scene(8, 10)))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri\n{tmp_path / 'scan0001'}\n")

    table = read_manifest(str(manifest))

    row = table.to_pylist()[0]
    assert row["relative_path"] == "scan0001"
    decoded = decode_image(storage.read_bytes(row["uri"]), 10_000)
    assert (decoded.format, decoded.width, decoded.height) == ("PNG", 10, 8)


def test_unknown_protocol_source_or_manifest_is_a_manifest_error():
    with pytest.raises(ManifestError, match="cannot list foo://bar/: unknown protocol 'foo'"):
        build_manifest(["foo://bar/"])
    with pytest.raises(ManifestError, match="cannot read manifest: unknown protocol 'foo'"):
        read_manifest("foo://bar/m.csv")


def test_source_names_with_control_characters_stay_on_one_line(tmp_path):
    with pytest.raises(ManifestError) as info:
        build_manifest([str(tmp_path / "a\nb")])
    assert "\n" not in str(info.value) and "a\\nb" in str(info.value)


# --- writing and reading ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_write_read_round_trip(image_dir, tmp_path, suffix):
    built = build_manifest([str(image_dir)])
    refs = [f"file:///refs/{i}.png" if i % 2 == 0 else None for i in range(built.num_rows)]
    built = built.set_column(built.schema.get_field_index("reference_uri"), "reference_uri",
                             pa.array(refs, pa.string()))
    target = tmp_path / f"manifest{suffix}"

    write_manifest(built, str(target))
    read = read_manifest(str(target))

    assert target.stat().st_size > 0
    assert read.schema == MANIFEST_SCHEMA
    assert read.to_pylist() == built.to_pylist()


def test_write_manifest_rejects_unknown_extension(image_dir, tmp_path):
    with pytest.raises(ManifestError, match="must end in"):
        write_manifest(build_manifest([str(image_dir)]), str(tmp_path / "manifest.xlsx"))


def test_uri_only_manifest_gets_paths_from_common_root(tmp_path):
    uris = ["/data/archive/2019/a.png", "/data/archive/2020/x/b.png", "/data/archive/c.jpg"]
    path = tmp_path / "m.csv"
    path.write_text("uri\n" + "\n".join(uris) + "\n")

    table = read_manifest(str(path))

    assert table.column("uri").to_pylist() == ["file://" + u for u in uris]
    assert table.column("relative_path").to_pylist() == ["2019/a.png", "2020/x/b.png", "c.jpg"]
    assert table.column("image_id").to_pylist() == [image_id_for("file://" + u) for u in uris]


def test_reference_and_output_uri_columns_survive(tmp_path):
    rows = [
        {"uri": "s3://bucket/lr/a.png", "reference_uri": "s3://bucket/hr/a.png",
         "output_uri": "s3://out/custom/a.png", "extra": 1},
        {"uri": "s3://bucket/lr/b.png", "reference_uri": "", "output_uri": None, "extra": 2},
    ]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)

    table = read_manifest(str(path))

    assert table.column("reference_uri").to_pylist() == ["s3://bucket/hr/a.png", None]
    assert table.column("output_uri").to_pylist() == ["s3://out/custom/a.png", None]
    assert table.column("relative_path").to_pylist() == ["a.png", "b.png"]
    # Unknown columns are dropped: the table always has exactly the manifest schema.
    assert table.schema == MANIFEST_SCHEMA


def test_given_image_ids_are_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"uri": "s3://b/a.png", "image_id": "mine-1"}\n{"uri": "s3://b/b.png"}\n')

    table = read_manifest(str(path))

    assert table.column("image_id").to_pylist() == ["mine-1", image_id_for("s3://b/b.png")]


# --- rejected manifests ----------------------------------------------------------------


def test_read_rejects_manifest_without_uri_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,size\n/a.png,3\n")

    with pytest.raises(ManifestError, match=r"no 'uri' column \(columns: path, size\)"):
        read_manifest(str(path))


def test_read_rejects_duplicate_image_ids(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("uri,image_id\n/a.png,same\n/b.png,same\n/c.png,other\n")

    with pytest.raises(ManifestError, match="1 duplicate image_id values, e.g. 'same'"):
        read_manifest(str(path))


def test_read_rejects_duplicate_uris(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("uri\n/a.png\n/a.png\n")

    with pytest.raises(ManifestError, match="duplicate image_id"):
        read_manifest(str(path))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_read_rejects_garbage(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"\x00\xffthis is not a manifest\x00{{{\n" * 10)

    with pytest.raises(ManifestError, match="cannot read manifest") as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


def test_read_rejects_missing_file(tmp_path):
    path = tmp_path / "absent.parquet"

    with pytest.raises(ManifestError, match="manifest not found") as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


def test_read_rejects_empty_uri(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"uri": "s3://b/a.png"}\n{"uri": null}\n')

    with pytest.raises(ManifestError, match="1 rows with an empty 'uri'"):
        read_manifest(str(path))


# --- load_sources ----------------------------------------------------------------------


def test_load_sources_reads_one_manifest_file(image_dir, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(build_manifest([str(image_dir / "sub")]), str(path))

    table = load_sources([str(path)])

    assert sorted(table.column("relative_path").to_pylist()) == ["im3.png", "im4.png"]


def test_load_sources_lists_directories_and_files(image_dir):
    table = load_sources([str(image_dir / "im0.png"), str(image_dir / "sub")])

    # Each source is listed relative to its own root.
    assert sorted(table.column("relative_path").to_pylist()) == ["im0.png", "im3.png", "im4.png"]


def test_load_sources_rejects_the_same_file_twice(image_dir):
    with pytest.raises(ManifestError, match="duplicate image_id"):
        load_sources([str(image_dir), str(image_dir / "sub" / "im3.png")])


def test_load_sources_refuses_manifest_mixed_with_directories(image_dir, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(build_manifest([str(image_dir)]), str(path))

    with pytest.raises(ManifestError, match="either one manifest file or image sources"):
        load_sources([str(path), str(image_dir)])


def test_a_relative_path_column_with_some_nulls_names_those_rows_only(tmp_path):
    """Rows that give a relative_path keep it; rows that leave it null (or empty) get the
    default, the path relative to the common root."""
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["/data/in/a.png", "/data/in/sub/b.png", "/data/in/c.png"],
                             "relative_path": ["named/a.png", None, ""]}), path)

    table = read_manifest(str(path))

    assert table.column("relative_path").to_pylist() == ["named/a.png", "sub/b.png", "c.png"]


@pytest.mark.parametrize("value", ["12kB", "1.5", "-3"])
def test_a_bytes_column_that_holds_no_file_sizes_is_a_manifest_error_naming_it(tmp_path, value):
    path = tmp_path / "m.csv"
    path.write_text(f"uri,bytes\n/data/a.png,100\n/data/b.png,{value}\n")
    with pytest.raises(ManifestError, match=f"column 'bytes' must hold file sizes .*got '?{value}"):
        read_manifest(str(path))


def test_a_bad_bytes_column_is_exit_2_with_one_line_before_any_work(tmp_path, capsys):
    from sr_batch import cli

    path = tmp_path / "m.csv"
    path.write_text("uri,bytes\n/data/a.png,many\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--output", str(out), "--model", "bicubic"]) == 2
    err = capsys.readouterr().err
    assert err == (f"sr-batch: error: manifest {path}: column 'bytes' must hold file sizes "
                   "(whole numbers >= 0), got 'many'\n")
    assert not out.exists()

