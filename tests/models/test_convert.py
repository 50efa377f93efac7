"""`sr-batch convert`: PyTorch files of spandrel's own architectures (ESRGAN's RRDBNet and
Real-ESRGAN's SRVGGNetCompact, small, seeded random weights) saved as .pth and .safetensors,
converted, checked and run; unknown, broken and hostile files fail in one line, exit 3,
nothing written. PyTorch and spandrel come with the [test] extra: nothing here is skipped."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from sr_batch import stats, storage, tiling
from sr_batch.cli import main
from sr_batch.models import onnx as onnx_models

from conftest import png_bytes, scene


def esrgan() -> torch.nn.Module:
    """RRDBNet as ESRGAN/Real-ESRGAN x4plus has it, 2 blocks of 16 filters instead of 23 of 64."""
    torch.manual_seed(0)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4).eval()


def compact() -> torch.nn.Module:
    """SRVGGNetCompact as realesr-animevideov3 has it, 4 convs of 16 features instead of 16 of 64."""
    torch.manual_seed(1)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=4).eval()


ARCHITECTURES = {"esrgan": (esrgan, "ESRGAN"), "compact": (compact, "RealESRGAN Compact")}


def save(module: torch.nn.Module, path) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    else:
        torch.save(module.state_dict(), path)


def convert(capsys, source, target) -> tuple[int, str, str]:
    code = main(["convert", str(source), "-o", str(target)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def torch_whole(module, image: np.ndarray, overlap: int) -> np.ndarray:
    """PyTorch's output on the image mirror-padded as the job pads it, cropped: the reference."""
    run = lambda batch: module(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)  # noqa: E731
    with torch.no_grad():
        return tiling.upscale_whole(run, image, 4, overlap)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_prints_what_the_model_is_and_writes_a_checked_onnx(tmp_path, capsys, arch, suffix):
    build, name = ARCHITECTURES[arch]
    module = build()
    source = tmp_path / f"model{suffix}"
    save(module, source)
    code, out, err = convert(capsys, source, tmp_path / "model.onnx")
    assert code == 0, err
    params = sum(p.numel() for p in module.parameters())
    lines = out.splitlines()
    assert lines[0].startswith(f"architecture: {name} (") and lines[0].endswith(f", x4, {params:,} parameters")
    assert lines[1].startswith("architecture license: MIT, Apache 2.0 or public domain")
    assert re.match(r"check ok: ONNX Runtime vs PyTorch on a 67x45 image: [01] 8-bit level", lines[2])
    assert lines[3].startswith(f"wrote {storage.to_uri(str(tmp_path / 'model.onnx'))}: ONNX opset 17")
    spec = onnx_models.probe_onnx(onnx_models.registry.resolve_model(str(tmp_path / "model.onnx"), 2), None)
    assert spec.scale == 4 and spec.params == pytest.approx(params, rel=0.01)  # PReLU slopes may fold


@pytest.mark.slow
@pytest.mark.parametrize("arch, suffix", [("esrgan", ".pth"), ("compact", ".safetensors")])
def test_converted_model_runs_in_the_job_like_pytorch(ray_local, tmp_path, capsys, arch, suffix):
    build, _ = ARCHITECTURES[arch]
    module = build()
    source = tmp_path / f"model{suffix}"
    save(module, source)
    assert convert(capsys, source, tmp_path / "model.onnx")[0] == 0
    images = tmp_path / "in"
    images.mkdir()
    for i in range(2):
        (images / f"img{i}.png").write_bytes(png_bytes(scene(70, 90, seed=i)))
    code = main(["run", str(images), "--output", str(tmp_path / "out"), "--model", str(tmp_path / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = stats.read_stats(str(tmp_path / "out")).to_pylist()
    assert {r["status"] for r in rows} == {"ok"} and {r["scale"] for r in rows} == {4}
    for row in rows:
        from PIL import Image

        with Image.open(row["source_uri"].removeprefix("file://")) as im:
            image = np.asarray(im.convert("RGB"), np.float32) / 255
        with Image.open(row["output_uri"].removeprefix("file://")) as im:
            ours = np.asarray(im, np.int16)
        expected = np.clip(torch_whole(module, image, row["tile_overlap"]), 0, 1)
        expected = np.floor(expected * 255 + 0.5).astype(np.int16)
        # Tiles against PyTorch on the whole image: rounding, plus the seam bound where feathered.
        allowed = 1 + (row["seam_max_levels"] or 0)
        assert np.abs(ours - expected).max() <= allowed, row["source_uri"]


class Payload:
    """Unpickling this runs a shell command: what weights-only loading must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_bad_files_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"weight": torch.zeros(1), "evil": Payload(marker)}, tmp_path / "hostile.pth")
    (tmp_path / "noise.pth").write_bytes(os.urandom(2048))
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(2048))
    torch.save({"encoder.layer.weight": torch.zeros(4, 4)}, tmp_path / "unknown.pth")
    save_file({"encoder.layer.weight": torch.zeros(4, 4)}, str(tmp_path / "unknown.safetensors"))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    (tmp_path / "model.onnx.pth").write_bytes(b"")
    cases = {"hostile.pth": "cannot read", "noise.pth": "cannot read", "noise.safetensors": "cannot read",
             "unknown.pth": "no architecture spandrel knows matches these weights",
             "unknown.safetensors": "no architecture spandrel knows matches these weights",
             "list.pth": "holds a list, not a dict of weights", "model.onnx.pth": "cannot read"}
    for name, message in cases.items():
        target = tmp_path / "out.onnx"
        code, out, err = convert(capsys, tmp_path / name, target)
        lines = err.strip().splitlines()
        assert code == 3 and len(lines) == 1 and message in lines[0], (name, err)
        assert lines[0].startswith("sr-batch: error: ") and out == ""
        assert not target.exists() and not list(tmp_path.glob("out.onnx*"))
    assert not marker.exists()  # the pickle's payload never ran


def test_run_points_a_pytorch_file_to_convert(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(scene(20, 20)))
    code = main(["run", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", "4x-model.pth"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "convert it once with `sr-batch convert 4x-model.pth -o 4x-model.onnx`" in err[0]
