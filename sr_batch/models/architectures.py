"""The three trainable architectures, and their receptive-field radius.

Every model maps NHWC float32 RGB in [0, 1] of any size to the same at
`scale` times the size. `basic` ends in a sigmoid; `residual` and `subpixel`
are linear and the caller clips to [0, 1].
"""

from __future__ import annotations

import math

import keras
from keras import layers

from sr_batch.models.layers import DepthToSpace

ARCHITECTURES = ("basic", "residual", "subpixel")

# Width of the low-resolution feature convs in `basic` and `residual`:
# 64 as in the issue; the models stay under 80k parameters (~300 KB files).
FEATURES = 64
# Channels out of the transposed conv. 32 halves the high-resolution work
# (the conv after it runs on scale^2 times the pixels) at no visible loss.
UP_FEATURES = 32
# ESPCN (Shi et al., 2016): 5x5 conv 64 -> 3x3 conv 32 -> 3x3 conv C*r^2.
ESPCN_FEATURES = (64, 32)


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


def receptive_radius(arch: str, scale: int) -> int:
    """Input pixels around floor(output / scale) that can change an output pixel.

    Derived from the kernel sizes: a k x k 'same' conv adds (k - 1) // 2 at its
    resolution; one at output resolution adds ceil(radius / scale) input pixels.
    """
    if arch == "bicubic":
        return 2  # Keys cubic: 4 taps, centre within half a pixel of floor(o / scale)
    if arch == "subpixel":
        return (5 // 2) + (3 // 2) + (3 // 2)
    if arch in ("basic", "residual"):
        body = (3 // 2) + (3 // 2) + _transpose_radius(_up_kernel(scale), scale) + math.ceil(1 / scale)
        return body if arch == "basic" else max(body, receptive_radius("bicubic", scale))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
