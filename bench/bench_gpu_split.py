"""Where a GPU call's time goes: the forward pass alone on the device, sending the tiles,
and the whole call with the float32 output copied back to host memory (JAX backend).

    KERAS_BACKEND=jax python bench/bench_gpu_split.py

Per zoo model (x2 architecture, untrained weights: speed does not depend on them) and
precision, for batches of 4, 16 and 64 tiles of the job's large tile (a 256 px core plus
the receptive radius): forward_ms (input already on the device, output left there),
h2d_ms (sending the input), call_ms (send, forward, copy the output back to numpy).
MP/s counts tile cores, as bench_gpu.py does. One JSON line per setting.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import keras  # noqa: E402

from sr_batch.models import registry  # noqa: E402
from sr_batch.models.architectures import build_model  # noqa: E402

SCALE, CORE = 2, 256


def timed(fn, repeats: int) -> float:
    fn()  # compile / warm up
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


def main() -> None:
    for name in ("residual", "quality"):
        spec = registry.resolve_model(name, SCALE)
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            model = build_model(spec.arch, SCALE)
            keras.mixed_precision.set_global_policy("float32")
            weights = ([v.value for v in model.trainable_variables],
                       [v.value for v in model.non_trainable_variables])
            forward = jax.jit(lambda w, x: model.stateless_call(w[0], w[1], x)[0])
            side = CORE + 2 * spec.receptive_radius
            for batch in (4, 16, 64):
                host = np.random.default_rng(0).random((batch, side, side, 3), dtype=np.float32)
                device = jax.device_put(host)
                forward_s = timed(lambda: forward(weights, device).block_until_ready(), 20)
                h2d_s = timed(lambda: jax.device_put(host).block_until_ready(), 20)
                call_s = timed(lambda: np.asarray(forward(weights, jax.device_put(host))), 5)
                mp = batch * (CORE * SCALE) ** 2 / 1e6
                print(json.dumps({
                    "model": name, "policy": policy, "batch": batch, "tile": side,
                    "forward_ms": round(forward_s * 1e3, 2), "h2d_ms": round(h2d_s * 1e3, 2),
                    "call_ms": round(call_s * 1e3, 2), "mp_s_on_device": round(mp / forward_s, 1),
                    "mp_s_with_copies": round(mp / call_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
