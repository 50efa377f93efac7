"""Architectures: each saves and reloads safely, its declared reach bounds its impulse response,
untrained it is bicubic, its FLOPs come from its kernels, and a Y-only net leaves chroma alone."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sr_batch import tiling  # noqa: E402
from sr_batch.models.architectures import ARCHITECTURES, build_model, receptive_radius  # noqa: E402

from models.helpers import randomise, run_eager  # noqa: E402

SCALES = (2, 3, 4)


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
