"""Any output size: --outscale F, --width W, --height H, --fit WxH.

The model always runs at its own scale, once or more (x4 then x2 for x8), and a
high-quality resize (Lanczos, antialiased) makes the exact size. Both are decided
per image from its size: `target_size` and `model_passes` are pure functions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sr_batch.errors import ConfigError

# More passes than this would be a x64 (two passes of x4 and one of x4 more) or larger
# output from one image: almost surely a wrong option, not a wish.
MAX_PASSES = 3
# The smallest output side --width, --height and --fit may ask for: the smallest tile side, and
# the least that still shows an image (a 1 px or empty output is almost surely a typo).
MIN_OUTPUT_SIDE = 8


@dataclass(frozen=True)
class OutputSize:
    """What the user asked of the output size; at most one kind of option is set."""

    outscale: float | None = None
    """The output as a factor of the input, any F >= 1 (1.5, 3.5, 8)."""
    width: int | None = None
    """Output width in px; with no height, the height keeps the input's aspect."""
    height: int | None = None
    """Output height in px; with no width, the width keeps the input's aspect."""
    fit: tuple[int, int] | None = None
    """(W, H): the largest size with the input's aspect that fits inside W x H."""

    def __post_init__(self) -> None:
        kinds = [self.outscale is not None, self.width is not None or self.height is not None,
                 self.fit is not None]
        if sum(kinds) > 1:
            raise ConfigError("give one of --outscale, --width/--height, --fit")
        if self.outscale is not None and not (math.isfinite(self.outscale) and self.outscale >= 1):
            raise ConfigError(f"--outscale must be a number >= 1, got {self.outscale:g}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value < MIN_OUTPUT_SIDE:
                raise ConfigError(f"--{name} must be >= {MIN_OUTPUT_SIDE} px, got {value}")
        if self.fit is not None and min(self.fit) < MIN_OUTPUT_SIDE:
            raise ConfigError(f"--fit must be WxH with W, H >= {MIN_OUTPUT_SIDE} px, "
                              f"got {self.fit[0]}x{self.fit[1]}")

    @property
    def asked(self) -> bool:
        return any(v is not None for v in (self.outscale, self.width, self.height, self.fit))

    def key(self) -> str | None:
        """The option as one canonical string (stats `output_size`, part of the reuse key); None
        when the output is at the model's scale."""
        if self.outscale is not None:
            return f"outscale={self.outscale:g}"
        if self.fit is not None:
            return f"fit={self.fit[0]}x{self.fit[1]}"
        if self.width is not None or self.height is not None:
            return "size=" + "x".join("*" if v is None else str(v) for v in (self.width, self.height))
        return None


def check_reachable(size: OutputSize, scale: int, scales: tuple[int, ...]) -> None:
    """ConfigError where --outscale asks for more than MAX_PASSES model passes of `scales`
    (the run's `scale` first) can reach."""
    if size.outscale is None:
        return
    most = scale * max(scales) ** (MAX_PASSES - 1)
    if size.outscale > most * (1 + 1e-9):
        raise ConfigError(f"--outscale {size.outscale:g} is more than x{most}, the most that "
                          f"{MAX_PASSES} model passes reach from x{scale}")


def parse_fit(text: str | None) -> tuple[int, int] | None:
    """`--fit 3840x2160` as (3840, 2160)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"--fit must be WxH, e.g. 3840x2160, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def target_size(size: OutputSize, width: int, height: int, scale: int) -> tuple[int, int]:
    """(W, H) of the output of a width x height input: the model's scale when nothing is asked."""
    if size.outscale is not None:
        return max(1, round(width * size.outscale)), max(1, round(height * size.outscale))
    if size.fit is not None:
        factor = min(size.fit[0] / width, size.fit[1] / height)
        return max(1, round(width * factor)), max(1, round(height * factor))
    if size.width is not None and size.height is not None:
        return size.width, size.height
    if size.width is not None:
        return size.width, max(1, round(height * size.width / width))
    if size.height is not None:
        return max(1, round(width * size.height / height)), size.height
    return width * scale, height * scale


def model_passes(factor: float, scale: int, scales: tuple[int, ...]) -> tuple[int, ...]:
    """The model scales to run, in order, to reach at least `factor`: the run's own `scale`
    first, then the smallest available scale that completes it (else the largest, again).

    x8 with x4 and x2 available: (4, 2). x1.5 with x2: (2,), then a resize down.
    """
    passes = [scale]
    reached = scale
    while reached < factor * (1 - 1e-9):
        remaining = factor / reached
        enough = [s for s in sorted(scales) if s >= remaining * (1 - 1e-9)]
        passes.append(enough[0] if enough else max(scales))
        reached *= passes[-1]
        if len(passes) > MAX_PASSES:
            raise ValueError(f"an output {factor:g}x the input needs more than {MAX_PASSES} model passes")
    return tuple(passes)
