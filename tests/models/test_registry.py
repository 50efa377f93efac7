"""The registry: names, paths and defaults resolve; files are checked and refused in one line;
the shipped weights match the index, fit the budget and beat bicubic; bfloat16 stays close."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from sr_batch import quality, resample  # noqa: E402
from sr_batch.errors import (ModelChecksumError, ModelError, ModelFormatError, ModelNotFoundError,  # noqa: E402
                             ModelScaleError)
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import ARCHITECTURES, build_model, receptive_radius  # noqa: E402

from models.helpers import synthetic_image  # noqa: E402


def test_registry_import_stays_tensorflow_free():
    code = ("import sys, sr_batch.models.registry as r; r.resolve_model(None, 2); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


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


def test_a_keras_model_with_a_one_channel_output_is_refused_as_onnx_is(tmp_path):
    """RGB in, one (grey) channel out: refused on load with the check ONNX files get, so no
    colour image is written grey."""
    inputs = keras.Input((None, None, 3))
    grey = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.Conv2DTranspose(1, 2, strides=2)(grey)
    path = tmp_path / "grey_x2.keras"
    keras.Model(inputs, outputs).save(path)
    spec = registry.resolve_model(str(path), 2)

    with pytest.raises(ModelFormatError) as info:
        registry.load_keras_model(spec)

    assert str(info.value) == f"{spec.uri} returns 1 channels; an RGB upscaler returns 3"


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
