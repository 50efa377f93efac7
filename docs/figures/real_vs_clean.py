"""Make docs/figures/real_vs_clean.png: one crop as bicubic / the clean default / `real` / the original.

    python docs/figures/real_vs_clean.py [--scale 4] [--quality 40] [--out docs/figures/real_vs_clean.png]

The picture is scikit-image's `astronaut` (Eileen Collins, a NASA photograph in the public
domain, bundled in the scikit-image wheel: `pip install scikit-image`), shrunk by Pillow bicubic
and saved as a JPEG at --quality, the way a web photo reaches an archive. Each panel is labelled
with its Y-PSNR against the original, over the crop and over the whole picture.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sr_batch import quality, resample  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.evaluation import model_upscale  # noqa: E402


def upscale_with(name: str, lr: np.ndarray, scale: int) -> np.ndarray:
    spec = registry.resolve_model(name, scale)
    model = registry.load_keras_model(spec, scale)
    return model_upscale(model, scale, spec.receptive_radius)[0](lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--quality", type=int, default=40, help="JPEG quality of the LR")
    parser.add_argument("--crop", type=int, default=192, help="side of the crop shown, output px")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "real_vs_clean.png"))
    args = parser.parse_args()
    scale = args.scale

    from skimage.data import astronaut

    hr = quality.crop_to_multiple(astronaut(), scale)
    buffer = io.BytesIO()
    Image.fromarray(resample.downscale_bicubic(hr, scale)).save(buffer, "JPEG", quality=args.quality)
    lr = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))

    panels = [("bicubic", resample.upscale_bicubic(lr, scale)),
              (f"{registry.resolve_model(None, scale).name} (clean)",
               upscale_with(registry.resolve_model(None, scale).name, lr, scale)),
              (f"real (--denoise {registry.DEFAULT_DENOISE:g})", upscale_with("real", lr, scale)),
              ("original", hr)]
    # The crop with the most detail: where the original's gradient energy is highest.
    side = args.crop
    energy = [(quality.gradient_energy_y(hr[y:y + side, x:x + side]), y, x)
              for y in range(0, hr.shape[0] - side + 1, side // 4)
              for x in range(0, hr.shape[1] - side + 1, side // 4)]
    _, top, left = max(energy)
    font = ImageFont.load_default(size=13)
    head = 36
    tiles = []
    for label, image in panels:
        crop = (slice(top, top + side), slice(left, left + side))
        psnr = "" if label == "original" else (
            f"{quality.psnr_y(image[crop], hr[crop], border=0):.2f} dB crop, "
            f"{quality.psnr_y(image, hr, border=scale):.2f} whole")
        tile = Image.new("RGB", (side, side + head), "white")
        tile.paste(Image.fromarray(image[crop]), (0, head))
        ImageDraw.Draw(tile).text((3, 2), label + "\n" + psnr, fill="black", font=font)
        tiles.append(tile)
    figure = Image.new("RGB", (len(tiles) * (side + 6) - 6, side + head), "white")
    for i, tile in enumerate(tiles):
        figure.paste(tile, (i * (side + 6), 0))
    figure = figure.resize((figure.width * 2, figure.height * 2), Image.NEAREST)  # pixels visible
    figure.save(args.out)
    print(f"wrote {args.out}: x{scale}, JPEG quality {args.quality}; Y-PSNR of the whole picture: "
          + ", ".join(f"{label} {quality.psnr_y(image, hr, border=scale):.2f}"
                      for label, image in panels[:-1]))


if __name__ == "__main__":
    main()
