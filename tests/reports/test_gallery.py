"""Gallery crops read from the image files, and placeholders for missing ones."""

from __future__ import annotations

from sr_batch import reports

from reports.known_stats import RUN_A, make_stats, write_images


def test_gallery_crops_and_placeholders(tmp_path):
    out = str(tmp_path / "out")
    make_stats(out, images_root=str(tmp_path / "src"))
    write_images(out, str(tmp_path / "src"))
    made = reports.build_report(reports.open_stats(out), run=RUN_A, metric="psnr_y_consistency",
                               plots=True, gallery=3)
    by_id = {(item.end, item.row["image_id"]): item.crops for item in made.gallery}
    worst = by_id[("worst", "img00")]  # readable, with a reference
    assert set(worst) == {"bicubic", "output", "reference"}
    assert all(uri and uri.startswith("data:image/jpeg;base64,") for uri in worst.values())
    best = by_id[("best", "img09")]  # no files on disk, no reference
    assert best == {"bicubic": None, "output": None}
    page = reports.render_html(made)
    assert page.count("not readable") == 2 * 3  # the three best have no files
