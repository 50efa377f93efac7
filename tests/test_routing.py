"""`--model auto`'s rules: which model and denoise strength each kind of estimate gets."""

import pytest

from sr_batch import routing
from sr_batch.estimates import Estimates


@pytest.mark.parametrize("estimates, model, denoise, reason", [
    (Estimates(None, None, 1.0, 0.8), "clean", None, "clean (noise 0.8)"),
    (Estimates(95.0, True, 1.05, 0.5), "clean", None, "jpeg q95, clean (noise 0.5)"),
    (Estimates(30.0, True, 2.2, 0.7), "real", routing.JPEG_DENOISE[0][1], "jpeg q30"),
    (Estimates(None, None, 1.9, 1.0), "real", None, "blocky 1.90"),
    (Estimates(None, None, 1.0, 15.0), "real", routing.NOISE_DENOISE[0][1], "noise 15.0"),
    (Estimates(None, None, float("nan"), float("nan")), "clean", None, "clean"),
])
def test_choose_routes_by_jpeg_quality_blocking_and_noise(estimates, model, denoise, reason):
    choice = routing.choose(estimates)
    assert choice.model == model and reason in choice.reason
    if denoise is not None:
        assert choice.denoise == denoise
    if model == "real":
        assert choice.denoise in routing.DENOISE_LEVELS and choice.key == f"real dn{choice.denoise:g}"


def test_x2_sends_lighter_noise_to_real_than_x4():
    """Measured per scale: at x2 `real` wins from sigma 6, at x4 the clean model up to 9."""
    noisy = Estimates(None, None, 1.0, 7.0)
    assert routing.choose(noisy, 2).key == "real dn0.25"
    assert routing.choose(noisy, 4).model == "clean"
    assert routing.choose(Estimates(None, None, 1.0, 5.0), 2).model == "clean"
    for scale in (2, 4):
        by_sigma = [routing.choose(Estimates(None, None, 1.0, s), scale).denoise or 0
                    for s in range(0, 30)]
        assert by_sigma == sorted(by_sigma)


def test_stronger_degradation_never_gets_a_weaker_denoise():
    by_quality = [routing.choose(Estimates(q, True, 1.0, 0.5)) for q in range(10, 91, 5)]
    strengths = [c.denoise for c in by_quality]
    assert all(c.model == "real" for c in by_quality)
    assert strengths == sorted(strengths, reverse=True)
    by_sigma = [routing.choose(Estimates(None, None, 1.0, s)).denoise or 0 for s in range(0, 30, 2)]
    assert by_sigma == sorted(by_sigma)
    # Both clues: the stronger one wins.
    both = routing.choose(Estimates(85.0, True, 1.1, 15.0))
    assert both.denoise == max(routing.choose(Estimates(85.0, True, 1.1, 0.0)).denoise,
                               routing.choose(Estimates(None, None, 1.0, 15.0)).denoise)
    assert "jpeg q85" in both.reason and "noise 15.0" in both.reason


def test_a_blurry_image_no_other_clue_sends_to_real_goes_there_at_full_denoise():
    blurry = routing.choose(Estimates(None, None, 1.0, 0.5, routing.BLURRY + 0.05))
    assert (blurry.model, blurry.denoise) == ("real", routing.BLUR_DENOISE) and "blurry 0.45" in blurry.reason
    assert routing.choose(Estimates(None, None, 1.0, 0.5, routing.BLURRY - 0.05)).model == "clean"
    assert routing.choose(Estimates(None, None, 1.0, 0.5, float("nan"))).model == "clean"
    # A JPEG keeps its own table's denoise: blur does not override a measured quality.
    assert routing.choose(Estimates(80.0, True, 1.1, 0.5, 0.6)).reason == "jpeg q80"
    assert routing.BLUR_DENOISE in routing.DENOISE_LEVELS


def test_lower_jpeg_quality_gets_a_denoise_that_leaves_less_grid():
    """Measured on Set14 at x4: from q50 down, denoise 0.75 leaves the grid at 1.18-1.32 within
    0.1 dB of the best; the rules never pick less than that there."""
    for quality in (30, 40, 50):
        assert routing.choose(Estimates(float(quality), True, 1.5, 0.5), 4).denoise == 0.75
    assert routing.choose(Estimates(95.0, True, 1.0, 0.5), 4).model == "clean"
