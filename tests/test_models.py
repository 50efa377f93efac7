"""Model zoo: architectures, the custom layer, the registry, shipped weights, training."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from sr_batch import quality, resample, tiling  # noqa: E402
from sr_batch.errors import (ModelChecksumError, ModelError, ModelNotFoundError,  # noqa: E402
                             ModelScaleError)
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import ARCHITECTURES, build_model, receptive_radius  # noqa: E402
from sr_batch.models.layers import DepthToSpace  # noqa: E402

SCALES = (2, 3, 4)


def randomise(model: keras.Model, seed: int = 0, std: float = 0.2) -> keras.Model:
    """Give every weight (zero-initialised ones too) a random value, so every path carries signal."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, std, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def run_eager(model: keras.Model):
    return lambda batch: np.asarray(model(batch, training=False))


def synthetic_image(size: int = 96) -> np.ndarray:
    """Smooth gradients with a few hard-edged disks and stripes: what SR should beat bicubic on."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * np.sin(3 * x + 2 * y)], axis=-1)
    for cy, cx, r, colour in ((0.3, 0.3, 0.15, (0.9, 0.1, 0.1)), (0.7, 0.6, 0.2, (0.1, 0.2, 0.8)),
                              (0.25, 0.75, 0.1, (1.0, 1.0, 0.9))):
        image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = colour
    stripes = (np.floor(x * size / 6) % 2 == 0) & (y > 0.8)
    image[stripes] = 0.05
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# --- the custom layer ---------------------------------------------------------------


def test_depth_to_space_matches_tensorflow_and_round_trips_config():
    x = np.random.default_rng(0).random((2, 3, 5, 3 * 9), dtype=np.float32)
    layer = DepthToSpace(3)
    np.testing.assert_array_equal(np.asarray(layer(x)), tf.nn.depth_to_space(x, 3).numpy())
    clone = DepthToSpace.from_config(layer.get_config())
    assert clone.block_size == 3
    assert keras.saving.get_registered_name(DepthToSpace) == "sr_batch>DepthToSpace"


# --- architectures --------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_saves_reloads_safely_and_upscales(tmp_path, arch, scale):
    model = randomise(build_model(arch, scale))
    path = tmp_path / f"{arch}_x{scale}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.random.default_rng(1).random((2, 7, 9, 3), dtype=np.float32)
    out = np.asarray(loaded(x))
    assert out.shape == (2, 7 * scale, 9 * scale, 3)
    np.testing.assert_allclose(out, np.asarray(model(x)), atol=1e-6)
    assert not any(layer.__class__.__name__ == "Lambda" for layer in loaded.layers)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_declared_receptive_radius_bounds_the_impulse_response(arch, scale):
    model = randomise(build_model(arch, scale), seed=scale)
    # The probe must be wider than the reach (the quality model's is 27 input px).
    size = max(32, 2 * receptive_radius(arch, scale) + 8)
    measured = tiling.receptive_radius_from_impulse(run_eager(model), scale, size=size)
    declared = receptive_radius(arch, scale)
    assert measured <= declared
    # Conservative, but derived from the kernels rather than padded by guesswork.
    assert declared <= measured + 1


@pytest.mark.parametrize("arch", ["residual", "srcnn", "espcn", "quality", "quality_lite"])
def test_untrained_residual_models_are_exactly_a_bicubic_upscale(arch):
    # The zero-initialised detail branch makes training start from the baseline.
    model = build_model(arch, 2)
    x = np.random.default_rng(2).random((1, 12, 12, 3), dtype=np.float32)
    skip = keras.layers.UpSampling2D(2, interpolation="bicubic")(x)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(skip), atol=1e-6)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("srgan", 2)


# --- registry -------------------------------------------------------------------------


def test_registry_import_stays_tensorflow_free():
    code = ("import sys, sr_batch.models.registry as r; r.resolve_model(None, 2); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_default_x2_resolves_to_a_shipped_model():
    index = registry.read_index()
    spec = registry.resolve_model(None, 2)
    assert spec.name == index["default"]["2"]
    assert spec.arch in ARCHITECTURES and spec.scale == 2 and spec.channels == 3
    assert Path(spec.uri.removeprefix("file://")).is_file()
    assert registry.resolve_model(spec.name, 2) == spec


def test_every_listed_model_matches_its_file():
    specs = registry.list_models()
    assert {s.arch for s in specs if s.scale == 2} == set(ARCHITECTURES)
    for spec in specs:
        path = Path(spec.uri.removeprefix("file://"))
        assert registry.sha256_of(path.read_bytes()) == spec.sha256
        model = registry.load_keras_model(spec)
        assert model.count_params() <= 1_500_000, f"{path.name}: the zoo's limit is 1.5 M parameters"
        assert model.count_params() == spec.params
        assert spec.receptive_radius == receptive_radius(spec.arch, spec.scale)
        assert registry.resolve_model(spec.name, spec.scale) == spec


def test_shipped_weights_fit_the_package_budget():
    total = sum(path.stat().st_size for path in registry.WEIGHTS_DIR.glob("*.keras"))
    # 20 MiB for the clean zoo, 2 more for the `real` pairs (stored in float16: half the bytes).
    assert total <= 22 * 1024 * 1024, f"{total / 2**20:.1f} MiB of weights; the budget is 22 MiB"


def test_bicubic_resolves_without_a_file():
    spec = registry.resolve_model("bicubic", 3)
    assert (spec.arch, spec.scale, spec.uri, spec.params, spec.receptive_radius) == ("bicubic", 3, None, 0, 2)


def test_unknown_name_and_missing_scale_are_rejected():
    with pytest.raises(ModelNotFoundError, match="bicubic"):
        registry.resolve_model("no-such-model", 2)
    with pytest.raises(ModelNotFoundError, match="available scales: x2"):
        registry.resolve_model("basic", 3)


def test_path_resolves_to_a_spec_measured_on_load(tmp_path):
    shipped = registry.resolve_model(None, 2)
    copy = tmp_path / "mine.keras"
    shutil.copyfile(shipped.uri.removeprefix("file://"), copy)
    spec = registry.resolve_model(str(copy), 2)
    assert (spec.name, spec.arch, spec.scale, spec.params, spec.sha256) == ("mine.keras", "keras", None, None, None)
    model = registry.load_keras_model(spec, scale=2)
    complete = registry.complete_spec(spec, model)
    assert (complete.scale, complete.channels, complete.params) == (2, 3, shipped.params)


def test_checksum_mismatch_is_detected(tmp_path):
    shipped = registry.resolve_model(None, 2)
    data = bytearray(Path(shipped.uri.removeprefix("file://")).read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(bytes(data))
    spec = dataclasses.replace(shipped, uri=corrupt.as_uri())
    with pytest.raises(ModelChecksumError) as caught:
        registry.load_keras_model(spec)
    assert caught.value.error_type == "model_checksum"


def test_scale_mismatch_is_detected(tmp_path):
    shipped = registry.resolve_model(None, 2)
    with pytest.raises(ModelScaleError, match="x2"):
        registry.load_keras_model(shipped, scale=3)
    path = tmp_path / "x3.keras"
    build_model("subpixel", 3).save(path)
    with pytest.raises(ModelScaleError, match="upscales by x3, but x4"):
        registry.load_keras_model(registry.resolve_model(str(path), 4), scale=4)


def test_missing_file_is_model_not_found(tmp_path):
    spec = registry.resolve_model(str(tmp_path / "absent.keras"), 2)
    with pytest.raises(ModelNotFoundError):
        registry.load_keras_model(spec)


def _lambda_model(path: Path) -> None:
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.repeat(keras.ops.repeat(x, 2, axis=1), 2, axis=2))(inputs)
    keras.Model(inputs, outputs).save(path)


def _tfsm_model(path: Path) -> None:
    class Upscale(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            return {"y": tf.image.resize(x, (16, 16))}

    module = Upscale()
    saved = path.parent / "savedmodel"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.TFSMLayer(str(saved), call_endpoint="serving_default")(inputs)["y"]
    keras.Model(inputs, outputs).save(path)


def _zip_without_config(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")


def _half_a_model(path: Path) -> None:
    data = Path(registry.resolve_model(None, 2).uri.removeprefix("file://")).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _config_not_json(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
        archive.writestr("metadata.json", "{}")


def _two_inputs(path: Path) -> None:
    a, b = keras.Input((None, None, 3)), keras.Input((None, None, 3))
    keras.Model([a, b], keras.layers.Add()([a, b])).save(path)


REFUSED_MODELS = {
    "lambda": (_lambda_model, "it contains a Lambda layer (Python code inside the file), which "
                              "loading with safe_mode=True refuses"),
    "tfsmlayer": (_tfsm_model, "it contains a TFSMLayer (it loads an external TensorFlow SavedModel)"),
    "zip-without-config": (_zip_without_config, "not a .keras file (a zip archive without config.json)"),
    "random-bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)),
                     "not a .keras file (1000 bytes that are not a zip archive)"),
    "cut-in-half": (_half_a_model, "that are not a zip archive"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "config-not-json": (_config_not_json, "not a .keras file (its config.json is not JSON"),
    "two-inputs": (_two_inputs, "cannot run model"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_MODELS))
def test_refused_model_file_is_one_line_naming_the_users_file(tmp_path, case):
    import re

    make, reason = REFUSED_MODELS[case]
    path = tmp_path / "user model.keras"
    make(path)
    spec = registry.resolve_model(str(path), 2)

    with pytest.raises(ModelError) as info:
        registry.load_keras_model(spec)

    message = str(info.value)
    assert message.startswith(("cannot load model file://", "cannot run model file://"))
    assert f" {spec.uri}: " in message and reason in message
    assert "\n" not in message
    assert not re.search(r"/tmp/tmp\w+\.keras", message)  # never the temporary copy


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


# --- shipped weights -----------------------------------------------------------------


@pytest.mark.parametrize("spec", [s for s in registry.list_models() if s.scale == 2], ids=lambda s: s.name)
def test_shipped_x2_models_beat_bicubic_on_a_synthetic_image(spec):
    hr = synthetic_image()
    lr = resample.downscale_bicubic(hr, 2)
    model = registry.load_keras_model(spec)
    output = np.asarray(model(lr[None].astype(np.float32) / 255.0))[0]
    sr = np.clip(np.rint(output * 255), 0, 255).astype(np.uint8)
    ours = quality.psnr_y(sr, hr, border=2)
    bicubic = quality.psnr_y(resample.upscale_bicubic(lr, 2), hr, border=2)
    assert ours > bicubic + 0.3, f"{spec.name}: {ours:.2f} dB vs bicubic {bicubic:.2f} dB"


@pytest.mark.parametrize("name", ["residual", "quality_lite", "espcn"])
def test_bfloat16_keeps_the_image_paths_in_float32_and_stays_close(name):
    spec = registry.resolve_model(name, 2)
    model = registry.load_keras_model(spec)
    low = registry.with_precision(model, "bfloat16")
    assert registry.with_precision(model, "float32") is model
    policies = {layer.name: layer.dtype_policy.name for layer in low.layers}
    output_layer = low.outputs[0]._keras_history.operation.name
    assert policies[output_layer] == "float32"
    assert all(policies[layer.name] == "float32" for layer in low.layers
               if type(layer).__name__ == "UpSampling2D")
    assert all(policies[layer.name] == "mixed_bfloat16" for layer in low.layers
               if type(layer).__name__ == "Conv2D" and layer.name != output_layer)
    for ours, theirs in zip(low.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)

    lr = resample.downscale_bicubic(synthetic_image(), 2)[None].astype(np.float32) / 255.0
    full, half = np.asarray(model(lr))[0], np.asarray(low(lr))[0]
    assert half.dtype == np.float32
    assert 0 < np.abs(full - half).max()
    # Against each other, far closer than either is to the truth (> 45 dB, i.e. < 1.5 levels RMS).
    assert quality.psnr(full * 255, half * 255) > 45


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        registry.with_precision(build_model("residual", 2), "float16")


@pytest.mark.parametrize("scale", [int(s) for s in registry.read_index()["default"] if int(s) != 2])
def test_shipped_defaults_at_larger_scales_beat_bicubic(scale):
    hr = synthetic_image(96)
    lr = resample.downscale_bicubic(hr, scale)
    spec = registry.resolve_model(None, scale)
    output = np.asarray(registry.load_keras_model(spec)(lr[None].astype(np.float32) / 255.0))[0]
    sr = np.clip(np.rint(output * 255), 0, 255).astype(np.uint8)
    ours = quality.psnr_y(sr, hr, border=scale)
    bicubic = quality.psnr_y(resample.upscale_bicubic(lr, scale), hr, border=scale)
    assert ours > bicubic + 0.2, f"{spec.name} x{scale}: {ours:.2f} dB vs bicubic {bicubic:.2f} dB"


def test_default_per_scale_is_the_best_model_meeting_the_speed_floor():
    from sr_batch.models.cards import DEFAULT_MIN_MP_PER_S

    index = registry.read_index()
    for scale, name in index["default"].items():
        entries = [e for e in index["models"] if str(e["scale"]) == scale and "mp_per_s" in e]
        eligible = [e for e in entries if e["mp_per_s"] >= DEFAULT_MIN_MP_PER_S]
        chosen = next(e for e in entries if e["name"] == name)
        if eligible:
            assert chosen in eligible
            assert chosen["set5_psnr_y"] == max(e["set5_psnr_y"] for e in eligible)
        else:  # nothing reaches the floor: the fastest
            assert chosen["mp_per_s"] == max(e["mp_per_s"] for e in entries)


def test_conv_flops_are_counted_from_the_kernels():
    from sr_batch.models.architectures import conv_macs_per_output_pixel

    # SRCNN 9-1-5 on the upscaled image, plus its two 1x1 colour convs (RGB->Y at LR, Y->RGB).
    assert conv_macs_per_output_pixel(build_model("srcnn", 2)) == round(
        9 * 9 * 64 + 64 * 32 + 5 * 5 * 32 + 3 / 4 + 3)
    # ESPCN runs every conv at LR: 1/scale^2 of the output pixels.
    espcn = (5 * 5 * 1 * 64 + 3 * 3 * 64 * 32 + 3 * 3 * 32 * 16 + 3) / 16 + 3
    assert conv_macs_per_output_pixel(build_model("espcn", 4)) == round(espcn)


def test_y_only_models_leave_chroma_bicubic():
    # A Y-only net may change luma only: Cb and Cr of the output are those of the bicubic skip.
    model = randomise(build_model("espcn", 2), seed=3)
    fixed = {"to_luma", "to_rgb"}
    weights = {layer.name: layer.get_weights() for layer in build_model("espcn", 2).layers if layer.name in fixed}
    for name, w in weights.items():
        model.get_layer(name).set_weights(w)
    x = np.random.default_rng(4).random((1, 10, 10, 3), dtype=np.float32)
    out = np.asarray(model(x))[0].astype(np.float64)
    up = np.asarray(keras.layers.UpSampling2D(2, interpolation="bicubic")(x))[0].astype(np.float64)
    cb = np.array([-37.797, -74.203, 112.0])
    cr = np.array([112.0, -93.786, -18.214])
    np.testing.assert_allclose(out @ cb, up @ cb, atol=1e-3)
    np.testing.assert_allclose(out @ cr, up @ cr, atol=1e-3)
    assert np.abs(out - up).max() > 0.01  # and luma did change


# --- self-ensemble ---------------------------------------------------------------------


def test_self_ensemble_is_the_mean_of_the_eight_transformed_predictions():
    from sr_batch.upscaler import self_ensemble

    model = randomise(build_model("subpixel", 2), seed=5, std=0.1)
    run = run_eager(model)
    tiles = np.random.default_rng(6).random((3, 12, 12, 3), dtype=np.float32)
    expected = np.zeros((3, 24, 24, 3), np.float64)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(tiles, k, axes=(1, 2))
            t = t[:, :, ::-1] if flip else t
            out = run(np.ascontiguousarray(t))
            out = out[:, :, ::-1] if flip else out
            expected += np.rot90(out, -k, axes=(1, 2)) / 8
    np.testing.assert_allclose(self_ensemble(run)(tiles), expected, atol=1e-5)
    assert not np.allclose(run(tiles), expected, atol=1e-3)  # a generic net is not equivariant


def test_self_ensemble_of_an_equivariant_model_is_a_no_op():
    from sr_batch.upscaler import make_tf_batch_fn, self_ensemble

    # The untrained residual model is exactly bicubic, which commutes with flips and quarter turns.
    run, traces = make_tf_batch_fn(build_model("residual", 3), 10)
    tiles = np.random.default_rng(7).random((2, 10, 10, 3), dtype=np.float32)
    np.testing.assert_allclose(self_ensemble(run)(tiles), run(tiles), atol=1e-5)
    assert traces() == 1  # square tiles: every transformed batch reuses the one trace


# --- evaluation -------------------------------------------------------------------------


def test_evaluate_prints_bicubic_and_models_in_the_standard_convention(tmp_path, hr_folder, capsys):
    from sr_batch.models import evaluation
    from sr_batch.models.data import load_images

    model_path = tmp_path / "untrained.keras"
    build_model("residual", 2).save(model_path)
    out_json = tmp_path / "rows.json"
    assert evaluation.main([str(hr_folder), "--scale", "2", "--model", str(model_path),
                            "--no-speed", "--threads", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "bicubic" in printed and "untrained.keras" in printed and "border = scale" in printed
    rows = {r["name"]: r for r in json.loads(out_json.read_text())}
    # The bicubic row, by hand: HR cropped to a multiple of 2, Pillow LR, Y, border 2.
    psnrs, ssims = [], []
    for hr in load_images([str(hr_folder)]):
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        up = resample.upscale_bicubic(resample.downscale_bicubic(hr, 2), 2)
        psnrs.append(quality.psnr_y(up, hr, border=2))
        ssims.append(quality.ssim_y(up, hr, border=2))
    scores = rows["bicubic"]["scores"]["synthetic"]
    assert scores["psnr_y"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert scores["ssim_y"] == pytest.approx(np.mean(ssims), abs=1e-4)
    # The untrained residual model is TF's bicubic: within a rounding step of Pillow's.
    model_row = rows["untrained.keras"]
    assert model_row["params"] == build_model("residual", 2).count_params()
    assert abs(model_row["scores"]["synthetic"]["psnr_y"] - scores["psnr_y"]) < 1.0


def test_evaluate_bfloat16_adds_a_row_per_model(tmp_path, hr_folder, capsys):
    from sr_batch.models import evaluation

    model_path = tmp_path / "untrained.keras"
    build_model("residual", 2).save(model_path)
    out_json = tmp_path / "rows.json"
    assert evaluation.main([str(hr_folder), "--scale", "2", "--model", str(model_path), "--bfloat16",
                            "--no-speed", "--threads", "1", "--json", str(out_json)]) == 0
    assert "untrained.keras bf16" in capsys.readouterr().out
    rows = json.loads(out_json.read_text())
    assert [(r["name"], r["precision"]) for r in rows] == [
        ("bicubic", "float32"), ("untrained.keras", "float32"), ("untrained.keras", "bfloat16")]
    # Untrained, the model is its float32 bicubic skip (the convolutions add zeros): the same scores.
    full, half = (r["scores"]["synthetic"]["psnr_y"] for r in rows[1:])
    assert half == pytest.approx(full, abs=0.01)


# --- training ------------------------------------------------------------------------


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


def test_batches_are_seeded_and_degraded_like_evaluation(hr_folder):
    from sr_batch.models.data import list_images, load_images, sample_batch

    assert [Path(u).name for u in list_images(str(hr_folder))] == ["extra.BMP", "img0.png", "img1.png", "img2.png"]
    images = load_images([str(hr_folder)])
    lr, hr = sample_batch(images, seed=3, step=5, batch_size=4, patch_size=24, scale=2)
    again, _ = sample_batch(images, seed=3, step=5, batch_size=4, patch_size=24, scale=2)
    other, _ = sample_batch(images, seed=3, step=6, batch_size=4, patch_size=24, scale=2)
    assert lr.shape == (4, 12, 12, 3) and hr.shape == (4, 24, 24, 3) and lr.dtype == np.float32
    np.testing.assert_array_equal(lr, again)
    assert not np.array_equal(lr, other)
    hr_u8 = np.rint(hr[0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.rint(lr[0] * 255).astype(np.uint8), resample.downscale_bicubic(hr_u8, 2))


def test_batch_stream_is_the_same_for_any_number_of_workers(tmp_path, hr_folder):
    from sr_batch.models.data import load_images, sample_batch
    from sr_batch.models.training import TrainConfig, batch_stream

    images = load_images([str(hr_folder)])
    config = TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), out=str(tmp_path / "m.keras"),
                         steps=9, epoch_steps=9, batch_size=3, patch_size=24, seed=4)
    single = list(batch_stream(images, config, first_step=2))
    threaded = list(batch_stream(images, dataclasses.replace(config, data_workers=3), first_step=2))

    assert len(single) == len(threaded) == 7  # steps 2..8, in order
    for step, (one, many) in enumerate(zip(single, threaded), start=2):
        expected = sample_batch(images, 4, step, 3, 24, 2)
        for got_single, got_threaded, want in zip(one, many, expected):
            np.testing.assert_array_equal(got_single, want)
            np.testing.assert_array_equal(got_threaded, want)


@pytest.mark.slow
def test_minutes_sets_the_steps_to_whole_epochs_that_fit(tmp_path, hr_folder):
    from sr_batch.errors import ConfigError
    from sr_batch.models.training import TrainConfig, train

    with pytest.raises(ConfigError, match="minutes"):
        TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), out=str(tmp_path / "m.keras"), minutes=0)
    config = TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), val=str(hr_folder),
                         out=str(tmp_path / "m.keras"), steps=7, epoch_steps=5, batch_size=2,
                         patch_size=16, minutes=0.05)  # --steps 7 is ignored: --minutes decides

    train(config)

    card = json.loads((tmp_path / "m.json").read_text())
    probe = card["minutes_probe"]
    assert probe["step_ms"] > 0 and probe["steps"] == card["steps"] == card["config"]["steps"]
    assert card["steps"] % 5 == 0 and card["steps"] >= 5
    # the probe's own timing decides how many whole epochs fit in the 3 s (rounding aside)
    epoch_s, epochs = 5 * probe["step_ms"] / 1e3 + probe["val_s"], card["steps"] // 5
    assert epochs == 1 or epochs * epoch_s <= 3.0 * 1.05
    assert (epochs + 1) * epoch_s >= 3.0 * 0.95
    assert [h["step"] for h in card["history"]] == list(range(5, card["steps"] + 1, 5))
    assert card["trained_with"]["keras_backend"] == "tensorflow"


def test_evaluate_reports_bicubic_on_the_same_pixels(hr_folder):
    from sr_batch.models.data import load_images
    from sr_batch.models.training import validate

    images = load_images([str(hr_folder)])

    def bicubic(batch, training=False):
        return resample.upscale_bicubic(batch[0], 2)[None]

    result = validate(bicubic, images, 2)
    assert result["images"] == 4
    assert result["psnr_y"] == pytest.approx(result["psnr_y_bicubic"], abs=0.05)


def test_training_config_is_checked_before_any_work(tmp_path, hr_folder):
    from sr_batch.errors import ConfigError
    from sr_batch.models.training import TrainConfig, train

    with pytest.raises(ConfigError, match="patch-size"):
        TrainConfig(arch="subpixel", scale=3, train=(str(hr_folder),), out=str(tmp_path / "m.keras"), patch_size=32)
    with pytest.raises(ConfigError, match="multiple of --epoch-steps"):
        TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), out=str(tmp_path / "m.keras"),
                    steps=25, epoch_steps=10)
    outside_zoo = TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),),
                              out=str(tmp_path / "m.keras"), steps=10, name="mine")
    with pytest.raises(ConfigError, match="weights"):
        train(outside_zoo)
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss_and_resumes(tmp_path, hr_folder):
    from sr_batch.models.data import load_images, sample_batch
    from sr_batch.models.training import TrainConfig, train

    config = TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), val=str(hr_folder),
                         out=str(tmp_path / "out" / "tiny.keras"), steps=30, epoch_steps=10,
                         batch_size=8, patch_size=32, lr=3e-3, seed=0,
                         checkpoint_dir=str(tmp_path / "ckpt"))
    sidecar = train(config)

    images = load_images([str(hr_folder)])
    lr, hr = sample_batch(images, seed=99, step=0, batch_size=16, patch_size=32, scale=2)
    keras.utils.set_random_seed(config.seed)
    untrained = build_model("subpixel", 2)
    trained = keras.saving.load_model(tmp_path / "out" / "tiny.keras", safe_mode=True, compile=False)
    before = float(np.mean(np.abs(np.asarray(untrained(lr)) - hr)))
    after = float(np.mean(np.abs(np.asarray(trained(lr)) - hr)))
    assert after < 0.7 * before, (before, after)

    written = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert written["sha256"] == registry.sha256_of((tmp_path / "out" / "tiny.keras").read_bytes())
    assert written["params"] == trained.count_params() == sidecar["params"]
    assert [h["step"] for h in written["history"]] == [10, 20, 30]
    assert set(written["eval"]["synthetic"]) == {"psnr_y", "psnr_y_bicubic", "images"}

    # Rerunning with more steps resumes from the checkpoint instead of starting over.
    longer = dataclasses.replace(config, steps=40)
    resumed = train(longer)
    assert [h["step"] for h in resumed["history"]] == [10, 20, 30, 40]
    # Time counts on from the checkpoint: the card's time covers all 40 steps.
    elapsed = [h["elapsed_s"] for h in resumed["history"]]
    assert elapsed == sorted(elapsed) and resumed["train_s"] >= elapsed[-1] > written["train_s"] * 0.99


# --- float16 storage and denoise pairs --------------------------------------------------


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
