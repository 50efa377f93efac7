"""The one place that writes model cards (weights/<name>_x<scale>.json) and the zoo index.

A card holds how a file was made (data, degradation, steps, seed, time) and
what it measures (Y-PSNR/SSIM beside bicubic, speed); the index (index.json)
holds one entry per (name, scale) with the card's headline fields, the file's
SHA-256 and the default per scale. Training writes a card when it saves
weights; `sr-batch evaluate --update-cards` writes measured numbers into both.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sr_batch import storage
from sr_batch.errors import MissingFileError
from sr_batch.models import registry

# A model is eligible as a scale's default at or above this forward rate on the
# project's 2-core CPU (output MP/s): the floor a laptop user still finds usable.
DEFAULT_MIN_MP_PER_S = 5.0
METRIC = ("Y (BT.601) PSNR/SSIM, border = scale, HR cropped to a multiple of scale, "
          "LR by Pillow BICUBIC (then the named degradation preset), output rounded to uint8")


def net_channels(arch: str) -> str:
    from sr_batch.models.architectures import Y_ONLY

    return "Y (luma; chroma is the bicubic upscale)" if arch in Y_ONLY else "RGB"


def card_uri(weights_uri: str) -> str:
    """The card beside a weights file: x.keras -> x.json."""
    return storage.to_uri(weights_uri.removesuffix(".keras") + ".json")


def write_card(weights_uri: str, card: dict) -> str:
    """Write the card next to its weights (atomically); return its URI."""
    uri = card_uri(weights_uri)
    storage.write_bytes_atomic(uri, (json.dumps(card, indent=2) + "\n").encode("utf-8"))
    return uri


def _write_index(index: dict, index_path: Path | str) -> None:
    text = json.dumps(index, indent=2) + "\n"
    storage.write_bytes_atomic(storage.to_uri(str(index_path)), text.encode("utf-8"))


def register(entry: dict, make_default: bool = False,
             index_path: Path | str = registry.INDEX_PATH) -> None:
    """Add or replace the (name, scale) entry in the index; optionally make it the scale's default."""
    index = registry.read_index(index_path)
    key = (entry["name"], int(entry["scale"]))
    models = [e for e in index["models"] if (e["name"], int(e["scale"])) != key]
    models.append({k: v for k, v in entry.items() if k not in ("history", "config")})
    index["models"] = sorted(models, key=lambda e: (e["name"], int(e["scale"])))
    index.setdefault("default", {})
    if make_default:
        index["default"][str(entry["scale"])] = entry["name"]
    _write_index(index, index_path)


def update_cards(rows: list) -> list[str]:
    """Write each zoo row's measured scores and speed (evaluation.Row) into its card and the index.

    Clean-LR rows give `eval`; rows on a degradation preset give `eval_degraded[preset]`;
    self-ensemble, bfloat16 and denoise rows are kept under their own keys.
    """
    index = registry.read_index()
    updated = []
    bicubic = {(r.scale, r.preset): r for r in rows if r.name == registry.BICUBIC}
    for entry in index["models"]:
        key = (entry["name"], int(entry["scale"]))
        mine = [r for r in rows if (r.name, r.scale) == key]
        if not mine:
            continue
        card: dict = {"net_channels": net_channels(entry["arch"]), "metric": METRIC}
        for row in mine:
            evaluation = {ds: {**s, "psnr_y_bicubic": bicubic[(row.scale, row.preset)].scores[ds]["psnr_y"],
                               "ssim_y_bicubic": bicubic[(row.scale, row.preset)].scores[ds]["ssim_y"]}
                          for ds, s in row.scores.items()}
            plain = not row.self_ensemble and row.precision == "float32"
            is_default_denoise = row.denoise in (None, registry.DEFAULT_DENOISE)
            if plain and is_default_denoise and row.preset == "clean":
                card.update(flops_per_pixel=row.flops_per_pixel, eval=evaluation)
                if row.mp_per_s == row.mp_per_s:  # --no-speed (NaN) keeps the speed measured before
                    card["mp_per_s"] = row.mp_per_s
                if "Set5" in evaluation:
                    card.update(set5_psnr_y=evaluation["Set5"]["psnr_y"],
                                set5_psnr_y_bicubic=evaluation["Set5"]["psnr_y_bicubic"])
            elif plain and is_default_denoise:
                card.setdefault("eval_degraded", {})[row.preset] = evaluation
            elif plain:
                card.setdefault("denoise", {}).setdefault(f"{row.denoise:g}", {})[row.preset] = evaluation
            elif row.self_ensemble and row.preset == "clean":
                card["self_ensemble"] = {"mp_per_s": row.mp_per_s, "eval": row.scores}
            elif row.precision == "bfloat16" and row.preset == "clean":
                card["bfloat16"] = {"mp_per_s": row.mp_per_s, "eval": row.scores}
        headline = {k: v for k, v in card.items() if k not in ("eval_degraded", "denoise")}
        entry.update(headline)
        weights_uri = storage.to_uri(str(registry.WEIGHTS_DIR / entry["file"]))
        try:
            existing = json.loads(storage.read_bytes(card_uri(weights_uri)))
        except MissingFileError:
            existing = {}
        for nested in ("eval_degraded", "denoise"):
            if nested in card:
                card[nested] = {**existing.get(nested, {}), **card[nested]}
        write_card(weights_uri, {**existing, **card})
        updated.append(f"{entry['name']} x{entry['scale']}")
    _write_index(index, registry.INDEX_PATH)
    return updated


def pick_defaults(min_mp_per_s: float = DEFAULT_MIN_MP_PER_S) -> dict[str, str]:
    """Per scale, the zoo model with the best Set5 Y-PSNR among those at or above the speed floor.

    Where no model reaches the floor, the fastest one: a default must exist. Models trained on
    degraded inputs (`real`) are never a clean default: they trade clean-LR PSNR for robustness.
    """
    index = registry.read_index()
    measured = [e for e in index["models"] if "mp_per_s" in e and "set5_psnr_y" in e
                and e.get("denoise_file") is None]
    defaults = {}
    for scale in sorted({str(e["scale"]) for e in measured}, key=int):
        entries = [e for e in measured if str(e["scale"]) == scale]
        eligible = [e for e in entries if e["mp_per_s"] >= min_mp_per_s]
        chosen = (max(eligible, key=lambda e: e["set5_psnr_y"]) if eligible
                  else max(entries, key=lambda e: e["mp_per_s"]))
        defaults[scale] = chosen["name"]
    index["default"] = defaults
    _write_index(index, registry.INDEX_PATH)
    return index["default"]


def save_keras(model, uri: str) -> bytes:
    """Save a Keras model to any URI by way of a local temporary file; return the bytes written."""
    handle, path = tempfile.mkstemp(suffix=".keras")
    os.close(handle)
    try:
        model.save(path)
        with open(path, "rb") as saved:
            data = saved.read()
    finally:
        os.unlink(path)
    storage.write_bytes_atomic(uri, data)
    return data


def store_float16(weights_uri: str) -> dict:
    """Rewrite a .keras file with its weights in float16 (about half the bytes; models loaded
    from it run in float32: registry.load_keras_model) and update its card's sha256, bytes and
    `stored_as`. The outputs move by at most one 8-bit level; evaluate the file again after."""
    from sr_batch.models.registry import _load_verified, with_dtype

    data = save_keras(with_dtype(_load_verified(weights_uri, None), "float16"), weights_uri)
    card = json.loads(storage.read_bytes(card_uri(weights_uri)))
    card.update(sha256=registry.sha256_of(data), bytes=len(data), stored_as="float16")
    write_card(weights_uri, card)
    return card


def register_pair(name: str, mild_uri: str, strong_uri: str, make_default: bool = False,
                  index_path: Path | str = registry.INDEX_PATH) -> dict:
    """Register two fine-tunes of one parent as one zoo model with --denoise: the mild file is
    the `--denoise 0` end, the strong one the `1` end (registry.load_keras_model interpolates).
    Both cards must exist, name the same architecture and scale, and lie in the weights folder."""
    cards = [json.loads(storage.read_bytes(card_uri(uri))) for uri in (mild_uri, strong_uri)]
    mild, strong = cards
    for key in ("arch", "scale", "params", "receptive_radius"):
        if mild[key] != strong[key]:
            raise ValueError(f"{mild_uri} and {strong_uri} differ in {key}: {mild[key]} vs {strong[key]}")
    if mild.get("init_from_card", {}).get("sha256") != strong.get("init_from_card", {}).get("sha256"):
        raise ValueError("a denoise pair must be fine-tuned from the same parent (init_from), so that "
                         "interpolating their weights is meaningful")
    entry = {k: v for k, v in mild.items() if k not in ("history", "config", "eval", "degradation")}
    entry.update(name=name, denoise_file=strong["file"], denoise_sha256=strong["sha256"],
                 degradation={"mild (--denoise 0)": mild.get("degradation"),
                              "strong (--denoise 1)": strong.get("degradation")})
    register(entry, make_default, index_path)
    return entry
