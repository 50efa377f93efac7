"""Fixtures of the model tests: a folder of synthetic HR images (evaluation, data, training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.helpers import synthetic_image


@pytest.fixture
def hr_folder(tmp_path) -> Path:
    folder = tmp_path / "synthetic" / "HR"
    folder.mkdir(parents=True)
    for i, size in enumerate((80, 96, 72)):
        image = np.roll(synthetic_image(size), shift=7 * i, axis=1)
        Image.fromarray(image).save(folder / f"img{i}.png")
    Image.fromarray(synthetic_image(64)).save(folder / "extra.BMP")
    (folder / "notes.txt").write_text("not an image")
    return folder
