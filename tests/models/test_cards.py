"""Cards and the index: register adds, replaces and sets the default; float16 storage halves a
file that still runs in float32; a denoise pair interpolates its two files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import build_model, receptive_radius  # noqa: E402

from models.helpers import randomise, synthetic_image  # noqa: E402


def test_register_adds_replaces_and_sets_default(tmp_path):
    from sr_batch.models import cards

    index = tmp_path / "index.json"
    entry = {"name": "m", "arch": "subpixel", "scale": 2, "channels": 3, "file": "m.keras",
             "sha256": "0" * 64, "params": 1, "receptive_radius": 4, "history": [1]}
    cards.register(entry, index_path=index)
    cards.register({**entry, "params": 2}, make_default=True, index_path=index)
    written = json.loads(index.read_text())
    assert [e["params"] for e in written["models"]] == [2]
    assert "history" not in written["models"][0]  # the card keeps it, the index does not
    assert written["default"] == {"2": "m"}
    assert registry.resolve_model(None, 2, index_path=index).params == 2


def _saved_model(path: Path, arch: str = "quality_lite", seed: int = 0) -> str:
    from sr_batch.models import cards

    model = randomise(build_model(arch, 2), seed=seed, std=0.02)
    model.save(path)
    data = path.read_bytes()
    cards.write_card(str(path), {"name": path.stem, "arch": arch, "scale": 2, "channels": 3,
                                 "file": path.name, "sha256": registry.sha256_of(data), "bytes": len(data),
                                 "params": model.count_params(), "receptive_radius": receptive_radius(arch, 2),
                                 "init_from_card": {"sha256": "parent"}})
    return str(path)


def test_float16_storage_halves_the_file_and_runs_in_float32(tmp_path):
    from sr_batch.models import cards

    path = tmp_path / "m.keras"
    _saved_model(path)
    before = registry.load_keras_model(registry.resolve_model(str(path), 2))
    size = path.stat().st_size
    card = cards.store_float16(str(path))
    assert path.stat().st_size < 0.6 * size and card["stored_as"] == "float16"
    assert card["sha256"] == registry.sha256_of(path.read_bytes())
    after = registry.load_keras_model(registry.resolve_model(str(path), 2))
    assert all(np.asarray(w).dtype == np.float32 for w in after.weights)
    image = synthetic_image(48)[None].astype(np.float32) / 255
    a, b = (np.rint(np.asarray(m(image)) * 255) for m in (before, after))
    assert np.abs(a - b).max() <= 1


def test_a_denoise_pair_interpolates_its_two_files(tmp_path):
    """--denoise S loads (1 - S) * mild + S * strong; 0 and 1 are the two files themselves."""
    from sr_batch.models import cards

    weights = tmp_path / "weights"
    weights.mkdir()
    mild, strong = _saved_model(weights / "p_mild_x2.keras", seed=1), _saved_model(weights / "p_strong_x2.keras", seed=2)
    index = tmp_path / "index.json"
    cards.register_pair("pair", storage_uri(mild), storage_uri(strong), index_path=index)
    entry = registry.read_index(index)["models"][0]
    assert (entry["file"], entry["denoise_file"]) == ("p_mild_x2.keras", "p_strong_x2.keras")
    spec = dataclasses.replace(registry.resolve_model(mild, 2), denoise_uri=storage_uri(strong),
                               sha256=entry["sha256"], denoise_sha256=entry["denoise_sha256"])
    assert spec.has_denoise and spec.identity not in (spec.sha256, spec.denoise_sha256)
    ends = [registry.load_keras_model(dataclasses.replace(spec, denoise_uri=None, denoise_sha256=None)),
            registry.load_keras_model(registry.resolve_model(strong, 2))]
    for strength in (0.0, 0.3, 1.0):
        blended = registry.load_keras_model(spec, denoise=strength)
        for got, a, b in zip(blended.get_weights(), ends[0].get_weights(), ends[1].get_weights()):
            np.testing.assert_allclose(got, (1 - strength) * a + strength * b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"--denoise must be in \[0, 1\]"):
        registry.load_keras_model(spec, denoise=1.5)


def storage_uri(path: str) -> str:
    from sr_batch import storage

    return storage.to_uri(path)
