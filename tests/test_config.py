"""JobConfig validation, --actors parsing and the default actor count."""

from __future__ import annotations

import pytest

from sr_batch.config import JobConfig, default_actor_count, parse_actors
from sr_batch.errors import ConfigError


def make(**changes) -> JobConfig:
    return JobConfig(sources=("images/",), output="out/", **changes)


def test_defaults_are_valid():
    config = make()

    assert config.scale is None and config.format == "keep" and config.actors is None
    assert config.intra_op_threads == 1


@pytest.mark.parametrize("changes, message", [
    ({"scale": 5}, "--scale must be one of"),
    ({"format": "gif"}, "--format must be one of"),
    ({"tile_size": 16, "tile_overlap": 8}, "need tile_size > 2 \\* tile_overlap"),
    ({"tile_overlap": -1}, "--tile-overlap must be 0 to 256 px"),
    ({"tile_overlap": 100000}, "--tile-overlap must be 0 to 256 px, got 100000"),
    ({"tile_size": 4}, "--tile-size must be 8 to 2048 px"),
    ({"tile_size": 100000}, "--tile-size must be 8 to 2048 px"),
    ({"tf_threads": -1}, "--tf-threads must be >= 0"),
    ({"stats_flush_s": 0}, "--stats-flush-s must be a number of seconds > 0"),
    ({"stats_flush_s": float("nan")}, "--stats-flush-s must be a number of seconds > 0"),
    ({"read_timeout_s": float("inf")}, "--read-timeout-s must be a number of seconds > 0"),
    ({"outscale": 1e9, "scale": 2}, r"--outscale 1e\+09 is more than x32, the most that 3 model passes reach from x2"),
    # No --scale: a model file's own may be x4, so the bound is x4's; the plan checks again.
    ({"outscale": 1e9}, r"--outscale 1e\+09 is more than x64, the most that 3 model passes reach from x4"),
    ({"outscale": 65, "scale": 4}, "more than x64"),
    ({"fit": "1x1"}, "--fit must be WxH with W, H >= 8 px"),
    ({"width": 7}, "--width must be >= 8 px"),
    ({"height": 0}, "--height must be >= 8 px"),
    ({"run_id": "../../evil"}, "--run-id must be 1 to 128 letters"),
    ({"run_id": "a/b"}, "--run-id must be"),
    ({"run_id": "run_id=x"}, "--run-id must be"),
    ({"run_id": ".hidden"}, "--run-id must be"),
    ({"run_id": ""}, "--run-id must be"),
    ({"run_id": "x" * 129}, "--run-id must be"),
    ({"cpus_per_actor": 0, "gpus_per_actor": 0}, "needs some CPU or GPU"),
    ({"gpus_per_actor": -1}, "must be >= 0"),
    ({"quality": 0}, "--quality"),
    ({"png_compress_level": 10}, "--png-compress-level"),
    ({"batch_size": 0}, "--batch-size must be >= 1"),
    ({"max_pixels": 0}, "--max-pixels must be >= 1"),
    ({"retries": -1}, "--retries"),
    ({"precision": "float16"}, "--precision must be one of float32, bfloat16"),
    ({"actors": "4-2"}, "--actors"),
])
def test_invalid_configs_raise(changes, message):
    with pytest.raises(ConfigError, match=message):
        make(**changes)


def test_no_sources_is_an_error():
    with pytest.raises(ConfigError, match="at least one SOURCE"):
        JobConfig(sources=(), output="out/")


def test_boundary_configs_are_accepted():
    # A one-pixel core, a GPU-only actor and the format/scale edges are all legal.
    assert make(tile_size=17, tile_overlap=8).tile_overlap == 8
    assert make(cpus_per_actor=0, gpus_per_actor=0.5).gpus_per_actor == 0.5
    assert make(scale=4, format="tiff").scale == 4
    assert make(outscale=32).outscale == 32 and make(scale=4, outscale=64).outscale == 64
    assert make(fit="8x8").fit == "8x8" and make(tile_overlap=256).tile_overlap == 256
    assert make(run_id="20250101T000000Z-ab12cd").run_id and make(run_id="nightly_2.1-a").run_id


def test_replace_validates_again():
    config = make(scale=3)

    assert config.replace(scale=4).scale == 4
    assert config.scale == 3
    with pytest.raises(ConfigError):
        config.replace(scale=7)


def test_actors_are_parsed_on_construction():
    assert make(actors="2-4").actors == (2, 4)
    assert make(actors=3).actors == (3, 3)


@pytest.mark.parametrize("text, expected", [
    ("3", (3, 3)), ("1-4", (1, 4)), (5, (5, 5)), ((2, 6), (2, 6)), (None, None), ("auto", None),
])
def test_parse_actors(text, expected):
    assert parse_actors(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1-", "-1", "1-2-3", "0", "0-2", "4-2", "two", "1.5"])
def test_parse_actors_rejects(text):
    with pytest.raises(ConfigError, match="--actors"):
        parse_actors(text)


@pytest.mark.parametrize("cpus, gpus, cpus_per_actor, gpus_per_actor, expected", [
    (2, 0, 1, 0, 1),        # a 2-core laptop: one actor, one CPU for reads and writes
    (16, 0, 1, 0, 15),
    (16, 0, 2, 0, 7),
    (8, 4, 1, 1, 4),        # GPUs bound it
    (8, 2, 1, 0.5, 4),      # two actors per GPU
    (4, 8, 1, 1, 3),        # CPUs bound it even with GPUs to spare
    (1, 0, 1, 0, 1),        # never below one
    (0, 0, 1, 0, 1),
    (2, 1, 4, 1, 1),
])
def test_default_actor_count(cpus, gpus, cpus_per_actor, gpus_per_actor, expected):
    assert default_actor_count(cpus, gpus, cpus_per_actor, gpus_per_actor) == expected


def test_default_actor_count_gpu_only_actors_are_bound_by_gpus():
    assert default_actor_count(4, 3, 0, 1) == 3


def test_default_actor_count_needs_the_gpus_it_asks_for():
    with pytest.raises(ConfigError, match="--gpus-per-actor 1 but the cluster has 0 GPUs"):
        default_actor_count(8, 0, 1, 1)


def test_tiling_resolves_to_two_tiles_by_default_and_one_when_given():
    from sr_batch.config import DEFAULT_TILE_CORE, LARGE_TILE_CORE
    from sr_batch.plan import resolve_tiling

    auto = resolve_tiling(make(), radius=15)
    assert auto.overlap == 15
    assert auto.sides == (DEFAULT_TILE_CORE + 30, LARGE_TILE_CORE + 30)
    assert auto.largest == LARGE_TILE_CORE + 30
    assert resolve_tiling(make(tile_overlap=3), radius=15).overlap == 3

    given = resolve_tiling(make(tile_size=100), radius=4)
    assert given.sides == (100,) and given.largest == 100
    with pytest.raises(ConfigError, match="too small for a tile overlap of 15"):
        resolve_tiling(make(tile_size=30), radius=15)
