"""Training: the batch stream, --minutes, validation against bicubic, the config checks, and a
tiny run that lowers the loss and resumes from its checkpoint."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sr_batch import resample  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import build_model  # noqa: E402


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
    with pytest.raises(ConfigError, match="scale-augment"):
        TrainConfig(arch="subpixel", scale=2, train=(str(hr_folder),), out=str(tmp_path / "m.keras"),
                    scale_augment=(0.8, 1.0))
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


def test_luma_loss_scores_bt601_y_and_ignores_chroma():
    from sr_batch.models.architectures import LUMA_WEIGHTS
    from sr_batch.models.training import LumaLoss

    rng = np.random.default_rng(0)
    target = rng.uniform(0.2, 0.8, (2, 8, 8, 3)).astype(np.float32)
    weights = np.array(LUMA_WEIGHTS, np.float32)
    # A change orthogonal to the luma weights moves R, G and B but not Y.
    chroma_only = np.cross(weights, [1.0, 0.0, 0.0]).astype(np.float32) * 0.1
    assert float(LumaLoss("l1")(target, target + chroma_only)) == pytest.approx(0.0, abs=1e-6)
    # Adding d to every channel moves Y by d * sum(weights).
    moved = float(LumaLoss("l1")(target, target + 0.05))
    assert moved == pytest.approx(0.05 * weights.sum(), rel=1e-4)
    assert float(LumaLoss("l2")(target, target + 0.05)) == pytest.approx((0.05 * weights.sum()) ** 2, rel=1e-4)
    with pytest.raises(ValueError, match="kind"):
        LumaLoss("huber")


def test_y_only_training_uses_the_luma_loss_and_resumes(tmp_path, hr_folder):
    from sr_batch.models.training import TrainConfig, train

    config = TrainConfig(arch="espcn", scale=2, train=(str(hr_folder),), val=str(hr_folder),
                         out=str(tmp_path / "espcn.keras"), steps=10, epoch_steps=5, batch_size=4,
                         patch_size=32, seed=0, checkpoint_dir=str(tmp_path / "ckpt"), scale_augment=(0.8,))
    first = train(config)
    assert (first["loss"], first["loss_on"]) == ("l1", "Y (BT.601)")
    card = json.loads((tmp_path / "espcn.json").read_text())
    assert card["config"]["scale_augment"] == [0.8]
    # The checkpoint holds the compiled model, loss included: it must load back to resume.
    resumed = train(dataclasses.replace(config, steps=15))
    assert [h["step"] for h in resumed["history"]] == [5, 10, 15]
