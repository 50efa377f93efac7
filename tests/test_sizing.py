"""Any output size: the per-image target and the model passes that reach it."""

from __future__ import annotations

import pytest

from sr_batch.config import JobConfig
from sr_batch.errors import ConfigError
from sr_batch.sizing import OutputSize, model_passes, parse_fit, target_size


def test_nothing_asked_is_the_model_scale():
    size = OutputSize()
    assert not size.asked and size.key() is None
    assert target_size(size, 100, 60, 4) == (400, 240)


@pytest.mark.parametrize("size, expected", [
    (OutputSize(outscale=1.5), (150, 90)),
    (OutputSize(outscale=8), (800, 480)),
    (OutputSize(width=3840), (3840, 2304)),       # the height keeps the aspect
    (OutputSize(height=120), (200, 120)),
    (OutputSize(width=300, height=100), (300, 100)),  # both: exactly that
    (OutputSize(fit=(1000, 1000)), (1000, 600)),   # the largest inside, same aspect
    (OutputSize(fit=(100, 1000)), (100, 60)),
])
def test_target_size(size, expected):
    assert target_size(size, 100, 60, 2) == expected


@pytest.mark.parametrize("factor, scale, scales, expected", [
    (2, 2, (2, 3, 4), (2,)),
    (1.5, 2, (2, 3, 4), (2,)),          # then a resize down
    (8, 4, (2, 3, 4), (4, 2)),           # x4 then x2
    (6, 2, (2, 3, 4), (2, 3)),
    (16, 4, (2, 3, 4), (4, 4)),
    (9, 3, (3,), (3, 3)),                # a user's file: its own scale again
    (3.5, 4, (2, 3, 4), (4,)),
])
def test_model_passes(factor, scale, scales, expected):
    assert model_passes(factor, scale, scales) == expected


def test_runaway_factors_are_refused():
    with pytest.raises(ValueError, match="more than 3 model passes"):
        model_passes(1000, 2, (2,))


def test_options_are_checked_once_in_the_config():
    base = {"sources": ("x",), "output": "out"}
    assert JobConfig(**base, outscale=1.5).output_size.key() == "outscale=1.5"
    assert JobConfig(**base, fit="3840x2160").output_size.fit == (3840, 2160)
    assert JobConfig(**base, width=3840).output_size.key() == "size=3840x*"
    for bad, message in [({"outscale": 0.5}, ">= 1"), ({"outscale": 2, "width": 100}, "give one of"),
                         ({"fit": "big"}, "WxH"), ({"width": 0}, ">= 8 px")]:
        with pytest.raises(ConfigError, match=message):
            JobConfig(**base, **bad)
    assert parse_fit(" 1920X1080 ") == (1920, 1080)
