"""The zoo's trainable architectures, and their receptive-field radius.

Every model maps NHWC float32 RGB in [0, 1] of any size to the same at
`scale` times the size. `basic` ends in a sigmoid; the others are linear and
the caller clips to [0, 1].

`srcnn`, `espcn` and `fsrcnn` are the classic Y-only networks: they see BT.601
luma and change only luma; chroma (Cb, Cr) is the bicubic upscale. Built from
stock layers: a fixed 1x1 conv takes RGB to Y, and another adds the predicted
Y change to R, G and B equally, which moves Y and leaves Cb and Cr unchanged.
They predict the luma residual over bicubic (their last layer starts at zero,
so the untrained model is bicubic), which lets short CPU trainings converge.
`quality` and `quality_lite` (EDSR-baseline style, two sizes) are RGB,
post-upsampling, with a bicubic skip.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

from sr_batch.models.layers import DepthToSpace

ARCHITECTURES = ("basic", "residual", "subpixel", "srcnn", "espcn", "fsrcnn", "quality", "quality_lite",
                 "real")
# Architectures that run their network on luma only; the card says "Y" for them.
Y_ONLY = ("srcnn", "espcn", "fsrcnn")

# Width of the low-resolution feature convs in `basic` and `residual`:
# 64 features; the models stay under 80k parameters (~300 KB files).
FEATURES = 64
# Channels out of the transposed conv. 32 halves the high-resolution work
# (the conv after it runs on scale^2 times the pixels) at no visible loss.
UP_FEATURES = 32
# ESPCN (Shi et al., 2016): 5x5 conv 64 -> 3x3 conv 32 -> 3x3 conv C*r^2.
ESPCN_FEATURES = (64, 32)
# The paper's tanh does not train here: at x3 it settles within 500 steps at +0.95 to
# +1.07 dB over bicubic on Set5 and stays there (lr 1e-3 or 1e-2, L1 or L2, zero or
# random last conv), while ReLU with He init reaches +1.88 dB in the same 2,000 steps.
ESPCN_ACTIVATION, ESPCN_INIT = "relu", "he_normal"
# SRCNN 9-1-5 (Dong et al., 2014): 9x9 conv 64 -> 1x1 conv 32 -> 5x5 conv 1, on the bicubic upscale.
SRCNN_KERNELS = (9, 1, 5)
SRCNN_FEATURES = (64, 32)
# FSRCNN (Dong et al., 2016), the paper's (d, s, m) = (56, 12, 4) and its 9x9 deconvolution.
FSRCNN_D, FSRCNN_S, FSRCNN_M, FSRCNN_DECONV = 56, 12, 4, 9
# PReLU slopes start at 0.25 (He et al. 2015, whose PReLU FSRCNN uses); Keras' default of 0
# starts them as ReLUs, and FSRCNN's 12-channel bottleneck then dies within a few steps.
PRELU_INIT = keras.initializers.Constant(0.25)
# EDSR-baseline style models (Lim et al., 2017), by name: (features, residual blocks).
# `quality`: 64 x 12, 0.93 M parameters (the zoo's limit is 1.5 M), trained on a GPU.
# `quality_lite`: 48 x 6, 0.28 M, trainable on 2 CPU cores and fast enough for a default.
# `real`: quality_lite's body, fine-tuned from it on degraded LR (models/degradations.py).
EDSR_SIZES = {"quality": (64, 12), "quality_lite": (48, 6), "real": (48, 6)}
# EDSR's residual scaling keeps the early updates of a block-stack without batch norm stable.
EDSR_RES_SCALE = 0.1
# BT.601 luma weights on [0, 1] RGB (Y's 0-255 studio range divided by 255); adding d to
# R, G and B moves Y by d * sum(weights) and leaves Cb and Cr (weights summing to 0) alone.
LUMA_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


def _up_kernel(scale: int) -> int:
    # Kernel 2*scale: each output pixel blends two input pixels per axis, as
    # bilinear upsampling would, which avoids the checkerboard of kernel == stride.
    return 2 * scale


def build_model(arch: str, scale: int, channels: int = 3) -> keras.Model:
    """A fresh, untrained model of `arch` that upscales by `scale`."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if int(scale) < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    scale = int(scale)
    inputs = keras.Input(shape=(None, None, channels), name="lr")
    if arch in Y_ONLY:
        if channels != 3:
            raise ValueError(f"{arch} converts RGB to luma and needs 3 channels, got {channels}")
        return _build_y_only(arch, scale, inputs)
    if arch in EDSR_SIZES:
        return _build_edsr(arch, scale, channels, inputs)
    # Centre the input on 0 so the first ReLUs start half open.
    x = layers.Rescaling(1.0, offset=-0.5, name="centre")(inputs)
    if arch == "subpixel":
        x = layers.Conv2D(ESPCN_FEATURES[0], 5, padding="same", activation="tanh", name="conv1")(x)
        x = layers.Conv2D(ESPCN_FEATURES[1], 3, padding="same", activation="tanh", name="conv2")(x)
        x = layers.Conv2D(channels * scale * scale, 3, padding="same", name="conv3")(x)
        # conv3 predicts the offset from 0.5 grey, undo the centring.
        x = layers.Rescaling(1.0, offset=0.5, name="uncentre")(x)
        outputs = DepthToSpace(scale, name="pixel_shuffle")(x)
        return keras.Model(inputs, outputs, name=f"subpixel_x{scale}")

    x = layers.Conv2D(FEATURES, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(FEATURES, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Conv2DTranspose(UP_FEATURES, _up_kernel(scale), strides=scale, padding="same",
                               activation="relu", name="upsample")(x)
    if arch == "basic":
        outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="conv_out")(x)
        return keras.Model(inputs, outputs, name=f"basic_x{scale}")

    # residual: the network learns the detail bicubic misses; a zero-initialised
    # last conv makes the untrained model exactly the bicubic upscale.
    detail = layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros", name="conv_out")(x)
    skip = layers.UpSampling2D(scale, interpolation="bicubic", name="skip")(inputs)
    outputs = layers.Add(name="add")([skip, detail])
    return keras.Model(inputs, outputs, name=f"residual_x{scale}")


def _fixed_conv(weights, name: str) -> layers.Conv2D:
    """A frozen 1x1 conv with the given (in, out) matrix: a colour transform from stock layers."""
    matrix = np.asarray(weights, dtype=np.float32)
    return layers.Conv2D(matrix.shape[1], 1, use_bias=False, trainable=False, name=name,
                         kernel_initializer=keras.initializers.Constant(matrix[None, None]))


def _build_y_only(arch: str, scale: int, inputs) -> keras.Model:
    """SRCNN / ESPCN / FSRCNN on luma; RGB out = bicubic RGB + the predicted Y change on each channel."""
    luma = _fixed_conv(np.array(LUMA_WEIGHTS)[:, None], "to_luma")(inputs)
    luma = layers.Rescaling(1.0, offset=-0.5, name="centre")(luma)
    if arch == "srcnn":
        x = layers.UpSampling2D(scale, interpolation="bicubic", name="pre_upsample")(luma)
        (k1, k2, k3), (f1, f2) = SRCNN_KERNELS, SRCNN_FEATURES
        x = layers.Conv2D(f1, k1, padding="same", activation="relu", name="conv1")(x)
        x = layers.Conv2D(f2, k2, padding="same", activation="relu", name="conv2")(x)
        y = layers.Conv2D(1, k3, padding="same", kernel_initializer="zeros", name="conv3")(x)
    elif arch == "espcn":
        x = layers.Conv2D(ESPCN_FEATURES[0], 5, padding="same", activation=ESPCN_ACTIVATION,
                          kernel_initializer=ESPCN_INIT, name="conv1")(luma)
        x = layers.Conv2D(ESPCN_FEATURES[1], 3, padding="same", activation=ESPCN_ACTIVATION,
                          kernel_initializer=ESPCN_INIT, name="conv2")(x)
        x = layers.Conv2D(scale * scale, 3, padding="same", kernel_initializer="zeros", name="conv3")(x)
        y = DepthToSpace(scale, name="pixel_shuffle")(x)
    else:  # fsrcnn
        x = layers.Conv2D(FSRCNN_D, 5, padding="same", name="feature")(luma)
        x = layers.PReLU(alpha_initializer=PRELU_INIT, shared_axes=[1, 2], name="feature_prelu")(x)
        x = layers.Conv2D(FSRCNN_S, 1, padding="same", name="shrink")(x)
        x = layers.PReLU(alpha_initializer=PRELU_INIT, shared_axes=[1, 2], name="shrink_prelu")(x)
        for i in range(FSRCNN_M):
            x = layers.Conv2D(FSRCNN_S, 3, padding="same", name=f"map{i + 1}")(x)
            x = layers.PReLU(alpha_initializer=PRELU_INIT, shared_axes=[1, 2], name=f"map{i + 1}_prelu")(x)
        x = layers.Conv2D(FSRCNN_D, 1, padding="same", name="expand")(x)
        x = layers.PReLU(alpha_initializer=PRELU_INIT, shared_axes=[1, 2], name="expand_prelu")(x)
        # Not zero-initialised: through FSRCNN's 12-channel bottleneck, gradients behind a
        # zero deconvolution stay below Adam's epsilon and the body never starts learning.
        y = layers.Conv2DTranspose(1, FSRCNN_DECONV, strides=scale, padding="same",
                                   kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                   name="deconv")(x)
    # y is the luma change over bicubic; spread it to R, G and B so Cb and Cr stay bicubic.
    rgb_up = layers.UpSampling2D(scale, interpolation="bicubic", name="skip")(inputs)
    spread = _fixed_conv(np.full((1, 3), 1.0 / sum(LUMA_WEIGHTS)), "to_rgb")(y)
    outputs = layers.Add(name="add")([rgb_up, spread])
    return keras.Model(inputs, outputs, name=f"{arch}_x{scale}")


def _build_edsr(arch: str, scale: int, channels: int, inputs) -> keras.Model:
    """EDSR-baseline style: head conv, residual blocks, body conv + long skip, conv -> pixel shuffle, + bicubic."""
    features, blocks = EDSR_SIZES[arch]
    x = layers.Rescaling(1.0, offset=-0.5, name="centre")(inputs)
    head = layers.Conv2D(features, 3, padding="same", name="head")(x)
    x = head
    for i in range(blocks):
        y = layers.Conv2D(features, 3, padding="same", activation="relu", name=f"block{i + 1}_conv1")(x)
        y = layers.Conv2D(features, 3, padding="same", name=f"block{i + 1}_conv2")(y)
        y = layers.Rescaling(EDSR_RES_SCALE, name=f"block{i + 1}_scale")(y)
        x = layers.Add(name=f"block{i + 1}_add")([x, y])
    x = layers.Conv2D(features, 3, padding="same", name="body_end")(x)
    x = layers.Add(name="long_skip")([head, x])
    # Zero-initialised, so the untrained model is exactly the bicubic upscale.
    x = layers.Conv2D(channels * scale * scale, 3, padding="same", kernel_initializer="zeros",
                      name="to_subpixels")(x)
    detail = DepthToSpace(scale, name="pixel_shuffle")(x)
    skip = layers.UpSampling2D(scale, interpolation="bicubic", name="skip")(inputs)
    outputs = layers.Add(name="add")([skip, detail])
    return keras.Model(inputs, outputs, name=f"{arch}_x{scale}")


def _transpose_radius(kernel: int, stride: int) -> int:
    """Input radius of a 'same' Conv2DTranspose around input pixel floor(o / stride)."""
    # TF's 'same' transposed conv is the gradient of a strided 'same' conv,
    # which pads max(kernel - stride, 0) pixels, the smaller half before.
    pad_before = max(kernel - stride, 0) // 2
    radius = 0
    for phase in range(stride):
        lowest = math.ceil((phase + pad_before - kernel + 1) / stride)
        highest = (phase + pad_before) // stride
        radius = max(radius, -lowest, highest)
    return radius


def _pre_upsampled_radius(output_radius: int, scale: int) -> int:
    """Input radius of convs reaching `output_radius` pixels into a bicubic (4-tap) upscale."""
    radius = 0
    for phase in range(scale):  # output pixel `phase` belongs to input pixel 0
        for p in range(phase - output_radius, phase + output_radius + 1):
            # Half-pixel centres: output pixel p samples input position (p + 0.5) / scale - 0.5.
            first = math.floor((p + 0.5) / scale - 0.5) - 1
            radius = max(radius, -first, first + 3)
    return radius


def receptive_radius(arch: str, scale: int) -> int:
    """Input pixels around floor(output / scale) that can change an output pixel.

    Derived from the kernel sizes: a k x k 'same' conv adds (k - 1) // 2 at its
    resolution; one at output resolution adds ceil(radius / scale) input pixels.
    """
    if arch == "bicubic":
        return 2  # Keys cubic: 4 taps, centre within half a pixel of floor(o / scale)
    if arch == "subpixel":
        return (5 // 2) + (3 // 2) + (3 // 2)
    if arch in EDSR_SIZES:
        # head, two convs per block, body end and the sub-pixel conv: all 3x3 at input resolution.
        return 1 + 2 * EDSR_SIZES[arch][1] + 1 + 1
    if arch == "espcn":
        return (5 // 2) + (3 // 2) + (3 // 2)
    if arch == "fsrcnn":
        mapping = (5 // 2) + FSRCNN_M * (3 // 2)
        return max(mapping + _transpose_radius(FSRCNN_DECONV, scale), receptive_radius("bicubic", scale))
    if arch == "srcnn":
        return _pre_upsampled_radius(sum(k // 2 for k in SRCNN_KERNELS), scale)
    if arch in ("basic", "residual"):
        body = (3 // 2) + (3 // 2) + _transpose_radius(_up_kernel(scale), scale) + math.ceil(1 / scale)
        return body if arch == "basic" else max(body, receptive_radius("bicubic", scale))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def conv_macs_per_output_pixel(model: keras.Model) -> int:
    """Multiply-adds of every conv per output pixel, counted from kernel shapes (FLOPs = 2 x MACs).

    A conv's MACs per pixel of its own output are kh * kw * c_in * c_out (a transposed
    conv's, divided by stride^2); each is weighed by its pixel count relative to the
    model output, read off one run on an 8x8 probe. Resampling and activations are
    not counted (a few per pixel, next to thousands).
    """
    convs = [layer for layer in model.layers
             if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose))]
    if not convs:
        return 0
    probe_side = 8
    probe = keras.Model(model.input, [model.output] + [layer.output for layer in convs])
    shapes = [tuple(out.shape) for out in probe(np.zeros((1, probe_side, probe_side, model.input_shape[-1]),
                                                        np.float32))]
    out_pixels = shapes[0][1] * shapes[0][2]
    total = 0.0
    for layer, shape in zip(convs, shapes[1:]):
        kh, kw, a, b = layer.kernel.shape
        # Conv2D kernels are (kh, kw, in, out); Conv2DTranspose kernels are (kh, kw, out, in).
        per_pixel = kh * kw * a * b
        if isinstance(layer, layers.Conv2DTranspose):
            per_pixel /= layer.strides[0] * layer.strides[1]
        total += per_pixel * shape[1] * shape[2] / out_pixels
    return int(round(total))
