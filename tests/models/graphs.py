"""ONNX super-resolution graphs built here with seeded random weights, shaped like the
community's models: a deep RRDB-style network (ESRGAN's trunk of residual blocks, nearest x2
upsampling and convs) and a compact SRVGG-style one (a plain conv stack, a pixel shuffle and
the nearest-upscaled input added). No downloads; small enough for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _conv(nodes, inits, rng, source, name, c_in, c_out, dilation=1, gain=1.0, dtype=np.float32):
    from onnx import numpy_helper, helper

    fan_in = c_in * 9
    w = rng.normal(0, gain * np.sqrt(2.0 / fan_in), (c_out, c_in, 3, 3)).astype(dtype)
    b = np.zeros(c_out, dtype)
    inits += [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]
    nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [name],
                                  pads=[dilation] * 4, dilations=[dilation, dilation]))
    return name


def _lrelu(nodes, source, name):
    from onnx import helper

    nodes.append(helper.make_node("LeakyRelu", [source], [name], alpha=0.2))
    return name


def _model(nodes, inits, dtype, scale_out: bool = True):
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "sr",
        [helper.make_tensor_value_info("input", elem, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output", elem, ["batch", 3, "out_height", "out_width"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _resize_nearest(nodes, inits, source, name, factor, dtype):
    from onnx import helper, numpy_helper

    inits.append(numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), f"{name}_scales"))
    nodes.append(helper.make_node("Resize", [source, "", f"{name}_scales"], [name], mode="nearest"))
    return name


def rrdb_style(path: Path, *, blocks: int = 8, features: int = 16, dilation: int = 4,
               seed: int = 0, dtype=np.float32) -> Path:
    """An ESRGAN-shaped x4 network: conv, a trunk of residual blocks (conv, LeakyReLU, conv,
    scaled by 0.2, added), a trunk conv added to the first features, two (nearest x2, conv,
    LeakyReLU) steps, two convs. The trunk's convs are dilated so that, like RRDB's 350
    convs, the response reaches past the 63 px the probe sees (to 67 px with the defaults),
    at a fraction of the compute."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    first = _conv(nodes, inits, rng, "input", "first", 3, features, dtype=dtype)
    x = first
    inits.append(numpy_helper.from_array(np.array(0.2, dtype), "res_scale"))
    for b in range(blocks):
        h = _lrelu(nodes, _conv(nodes, inits, rng, x, f"b{b}c1", features, features, dilation, dtype=dtype), f"b{b}a")
        h = _conv(nodes, inits, rng, h, f"b{b}c2", features, features, dilation, dtype=dtype)
        nodes.append(helper.make_node("Mul", [h, "res_scale"], [f"b{b}s"]))
        nodes.append(helper.make_node("Add", [x, f"b{b}s"], [f"b{b}o"]))
        x = f"b{b}o"
    body = _conv(nodes, inits, rng, x, "body", features, features, dtype=dtype)
    nodes.append(helper.make_node("Add", [first, body], ["trunk"]))
    x = "trunk"
    for step in range(2):
        x = _resize_nearest(nodes, inits, x, f"up{step}", 2, dtype)
        x = _lrelu(nodes, _conv(nodes, inits, rng, x, f"up{step}c", features, features, dtype=dtype), f"up{step}a")
    x = _lrelu(nodes, _conv(nodes, inits, rng, x, "hr", features, features, dtype=dtype), "hra")
    last = _conv(nodes, inits, rng, x, "last", features, 3, gain=0.1, dtype=dtype)
    # Centred on the nearest-upscaled input, so outputs sit mostly inside [0, 1] as an SR
    # model's do and the 8-bit comparisons mean something.
    base = _resize_nearest(nodes, inits, "input", "base", 4, dtype)
    nodes.append(helper.make_node("Add", [base, last], ["output"]))
    model = _model(nodes, inits, dtype)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def srvgg_style(path: Path, *, convs: int = 8, features: int = 16, scale: int = 4, seed: int = 1,
                dtype=np.float32) -> Path:
    """An SRVGGNetCompact-shaped network: conv + PReLU stack, a conv to 3 x scale^2 channels,
    a pixel shuffle, plus the nearest-upscaled input. Its response vanishes within `convs + 2`
    px: it tiles exactly."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    c_in = 3
    for i in range(convs):
        x = _conv(nodes, inits, rng, x, f"c{i}", c_in, features, dtype=dtype)
        inits.append(numpy_helper.from_array(np.full((features, 1, 1), 0.25, dtype), f"p{i}_slope"))
        nodes.append(helper.make_node("PRelu", [x, f"p{i}_slope"], [f"p{i}"]))
        x, c_in = f"p{i}", features
    x = _conv(nodes, inits, rng, x, "out", features, 3 * scale * scale, gain=0.1, dtype=dtype)
    nodes.append(helper.make_node("DepthToSpace", [x, ], ["shuffled"], blocksize=scale, mode="CRD"))
    base = _resize_nearest(nodes, inits, "input", "base", scale, dtype)
    nodes.append(helper.make_node("Add", [base, "shuffled"], ["output"]))
    model = _model(nodes, inits, dtype)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
