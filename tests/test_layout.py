"""OutLayout: every path of a run under one OUT, and outputs only under OUT/images (by name, and
on local disks after following links)."""

from __future__ import annotations

import pytest

from sr_batch.errors import PathEscapeError
from sr_batch.layout import OutLayout


def test_every_path_lives_under_the_one_root(tmp_path):
    layout = OutLayout.of(str(tmp_path / "out") + "/")
    root = f"file://{tmp_path}/out"
    assert layout.root == root and layout == OutLayout.of(root)
    assert (layout.images, layout.stats, layout.runs, layout.manifests, layout.lock) == (
        f"{root}/images", f"{root}/stats", f"{root}/runs", f"{root}/manifests", f"{root}/nightly.lock")
    assert layout.stats_run("r1") == f"{root}/stats/run_id=r1"
    assert layout.run_record("r1") == f"{root}/runs/r1.json"
    assert layout.manifest("r1") == f"{root}/manifests/r1.parquet"
    remote = OutLayout.of("s3://bk/out/")
    assert (remote.root, remote.images) == ("s3://bk/out", "s3://bk/out/images")


def test_outputs_stay_under_images(tmp_path):
    layout = OutLayout.of(str(tmp_path / "out"))
    assert layout.image_path("a/./b.png") == f"{layout.images}/a/b.png"
    for relative in ("../runs/r1.json", "a/../../x.png", "/etc/x.png", "", "s3://bk/x.png", "a\\b.png"):
        with pytest.raises(PathEscapeError):
            layout.image_path(relative)
    for uri in (layout.run_record("r1"), f"{layout.root}/images-not/x.png",
                f"file://{tmp_path}/elsewhere/x.png", "memory://out/images/x.png"):
        with pytest.raises(PathEscapeError):
            layout.check_output(uri)


def test_a_link_out_of_images_is_refused_and_a_writer_sees_a_new_one(tmp_path):
    layout = OutLayout.of(str(tmp_path / "out"))
    images, outside = tmp_path / "out" / "images", tmp_path / "outside"
    (images / "sub").mkdir(parents=True)
    outside.mkdir()
    (images / "inside").symlink_to(images / "sub")  # a link that stays under OUT/images is fine
    assert layout.image_path("inside/a.png") == f"{layout.images}/inside/a.png"
    (images / "away").symlink_to(outside)
    with pytest.raises(PathEscapeError, match="through a link"):
        layout.image_path("away/a.png")

    assert layout.image_path("later/a.png") == f"{layout.images}/later/a.png"  # planned: no link yet
    (images / "later").symlink_to(outside)
    with pytest.raises(PathEscapeError, match="through a link"):  # the writer resolves again
        layout.check_output(f"{layout.images}/later/a.png", cached=False)
