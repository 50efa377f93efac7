"""Provenance: every output's XMP, read back by exiftool (Debian's libimage-exiftool-perl), the
source's own XMP kept, hostile source XMP refused, --provenance none, and `sr-batch provenance`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import tifffile
from PIL import Image

from sr_batch import cli, provenance, stats
from sr_batch.decode import decode_image
from sr_batch.encode import JPEG_XMP_MAX, encode_image
from sr_batch.config import JobConfig
from sr_batch.errors import ConfigError

from conftest import scene

TERM = "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicallyEnhanced"
SOURCE_XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" '
    'xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'xmpMM:DocumentID="xmp.did:scan-0042">'
    '<dc:creator><rdf:Seq><rdf:li>Jane Archivist</rdf:li></rdf:Seq></dc:creator>'
    '<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/negativeFilm'
    '</Iptc4xmpExt:DigitalSourceType>'
    '<xmpMM:History><rdf:Seq><rdf:li rdf:parseType="Resource"><stEvt:action>created</stEvt:action>'
    '<stEvt:softwareAgent>ScanStation 3</stEvt:softwareAgent></rdf:li></rdf:Seq></xmpMM:History>'
    '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
# An entity expansion bomb: defusedxml refuses any DTD entity, so it is never expanded.
HOSTILE_XMP = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "EXPANDED!!">'
               b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
               b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')


def exiftool(*paths) -> list[dict]:
    """exiftool's JSON of each file's XMP, tags named by group (XMP-iptcExt:DigitalSourceType)."""
    path = shutil.which("exiftool")
    if path is None:
        pytest.fail("Debian's `exiftool` is not installed: run .ci/run, or apt-get install -y "
                    "libimage-exiftool-perl (the provenance tests read outputs with it)")
    done = subprocess.run([path, "-j", "-G1", "-struct", "-XMP:all", *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def making(**changes) -> provenance.Making:
    fields = dict(source_uri="file:///archive/scan-0042.jpg", source_sha256="a" * 64, model="residual",
                  model_sha256="b" * 64, scale=2, out_width=64, out_height=48, denoise=None, route=None,
                  run_id="r-1", when="2026-12-05T16:00:00+00:00")
    return provenance.Making(**{**fields, **changes})


# --- every format, read back by exiftool ---------------------------------------------------


@pytest.mark.parametrize("fmt, dtype, level", [
    ("png", np.uint8, 1), ("png", np.uint8, 6), ("png", np.uint16, 1), ("jpeg", np.uint8, 1),
    ("webp", np.uint8, 1), ("tiff", np.uint8, 1), ("tiff", np.uint16, 1)])
def test_exiftool_reads_the_provenance_of_every_format(tmp_path, fmt, dtype, level):
    """libpng and Pillow PNG, 16-bit PNG and TIFF (tifffile), JPEG, WebP, 8-bit TIFF (Pillow)."""
    pixels = scene(48, 64).astype(dtype) * (257 if dtype == np.uint16 else 1)
    xmp, note = provenance.build_xmp(making(), None)
    assert note is None
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(encode_image(pixels, None, fmt, png_compress_level=level, xmp=xmp))

    [tags] = exiftool(path)
    assert tags["XMP-iptcExt:DigitalSourceType"] == TERM
    assert tags["XMP-srbatch:ModelSHA256"] == "b" * 64
    assert tags["XMP-srbatch:Model"] == "residual"
    assert tags["XMP-srbatch:SourceSHA256"] == "a" * 64
    assert tags["XMP-xmpMM:DerivedFrom"]["FilePath"] == "file:///archive/scan-0042.jpg"
    assert tags["XMP-srbatch:RunID"] == "r-1"
    assert tags["XMP-srbatch:OutputSize"] == "64x48"
    [event] = tags["XMP-xmpMM:History"]
    assert event["Action"] == "derived" and event["SoftwareAgent"].startswith("sr-batch ")
    # The pixels are untouched by the metadata.
    assert decode_image(path.read_bytes(), 10**6).pixels.shape == (48, 64, 3)


def test_source_xmp_is_kept_and_extended():
    xmp, note = provenance.build_xmp(making(), SOURCE_XMP)
    said = provenance.describe(xmp)
    assert note is None
    assert said["DigitalSourceType"] == TERM  # the output's type, not the scan's
    assert said["DerivedFrom"]["documentID"] == "xmp.did:scan-0042"
    assert said["DocumentID"] != "xmp.did:scan-0042"
    assert [e["action"] for e in said["History"]] == ["created", "derived"]
    assert b"Jane Archivist" in xmp


@pytest.mark.parametrize("bad", [HOSTILE_XMP, b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF",
                                 b"\xff\xfe not xml", b"<a>no rdf here</a>"])
def test_a_bad_source_xmp_gives_ours_alone_and_says_so(bad):
    xmp, note = provenance.build_xmp(making(), bad)
    assert note.startswith("source XMP unreadable")
    said = provenance.describe(xmp)
    assert said["DigitalSourceType"] == TERM and said["RunID"] == "r-1"
    assert b"EXPANDED" not in xmp


def test_hash_mode_names_no_path():
    xmp, _ = provenance.build_xmp(making(source_uri=None), SOURCE_XMP)
    assert b"scan-0042.jpg" not in xmp and b"archive" not in xmp
    assert provenance.describe(xmp)["SourceSHA256"] == "a" * 64


def test_provenance_options_are_checked():
    with pytest.raises(ConfigError, match="--provenance must"):
        JobConfig(sources=("in",), output="out", provenance="c2pa")
    with pytest.raises(ConfigError, match="--provenance-source must"):
        JobConfig(sources=("in",), output="out", provenance_source="path")
    args = cli.build_parser().parse_args(["nightly", "in", "-o", "out", "--provenance", "none",
                                          "--provenance-source", "hash", "--address", "x"])
    config = cli._job_config(args)
    assert (config.provenance, config.provenance_source) == ("none", "hash")
    assert cli.config_to_options(config)[-4:] == ["--provenance", "none", "--provenance-source", "hash"]


# --- the real job ----------------------------------------------------------------------


def _sources(folder):
    """A JPEG with its own XMP, a JPEG with a hostile XMP, a PNG, a WebP and a TIFF."""
    folder.mkdir()
    Image.fromarray(scene(24, 32, seed=1)).save(folder / "scan.jpg", quality=90, xmp=SOURCE_XMP)
    Image.fromarray(scene(20, 28, seed=2)).save(folder / "hostile.jpg", quality=90, xmp=HOSTILE_XMP)
    Image.fromarray(scene(18, 22, seed=3)).save(folder / "plain.png")
    Image.fromarray(scene(16, 20, seed=4)).save(folder / "web.webp", quality=90)
    Image.fromarray(scene(22, 26, seed=5)).save(folder / "doc.tif")
    return folder


@pytest.mark.slow
def test_the_job_writes_provenance_that_exiftool_and_the_command_read(ray_local, tmp_path, capsys):
    from sr_batch.pipeline import run_job

    source, out = _sources(tmp_path / "in"), tmp_path / "out"
    result = run_job(JobConfig(sources=(str(source),), output=str(out), model="residual",
                               run_id="prov-1"), echo=lambda line: None)
    assert result.counts == {"ok": 5}
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in stats.read_stats(str(out)).to_pylist()}
    files = {name: row["output_uri"].removeprefix("file://") for name, row in rows.items()}
    tags = {t["SourceFile"].rsplit("/", 1)[-1].split(".")[0]: t for t in exiftool(*files.values())}
    assert {name.split(".")[0] for name in files} == set(tags)
    for name, row in rows.items():
        t = tags[name.split(".")[0]]
        data = open(files[name], "rb").read()
        assert row["provenance"] == "xmp"
        assert row["output_sha256"] == hashlib.sha256(data).hexdigest()
        assert row["source_sha256"] == hashlib.sha256((source / name).read_bytes()).hexdigest()
        assert t["XMP-iptcExt:DigitalSourceType"] == TERM
        assert t["XMP-srbatch:ModelSHA256"] == row["model_sha256"] and len(row["model_sha256"]) == 64
        assert t["XMP-srbatch:SourceSHA256"] == row["source_sha256"]
        assert t["XMP-xmpMM:DerivedFrom"]["FilePath"] == row["source_uri"]
        assert t["XMP-srbatch:RunID"] == "prov-1"
        assert t["XMP-srbatch:Scale"] == 2
        assert t["XMP-srbatch:OutputSize"] == f"{row['out_width']}x{row['out_height']}"
    assert {row["format"] for row in rows.values()} == {"jpeg", "png", "webp", "tiff"}
    # The JPEG source's own XMP survives, extended.
    scan = tags["scan"]
    assert scan["XMP-dc:Creator"] == ["Jane Archivist"]
    assert scan["XMP-xmpMM:DerivedFrom"]["DocumentID"] == "xmp.did:scan-0042"
    assert [e["Action"] for e in scan["XMP-xmpMM:History"]] == ["created", "derived"]
    # A hostile source XMP fails nothing: ours alone, and the row says so.
    assert "source XMP unreadable" in rows["hostile.jpg"]["notes"]
    assert "XMP-dc:Creator" not in tags["hostile"]

    # `sr-batch provenance`: what the file says, and the stats row it matches.
    assert cli.main(["provenance", files["scan.jpg"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"model sha256: {rows['scan.jpg']['model_sha256']}" in printed
    assert "stats: matches run prov-1, image " + rows["scan.jpg"]["image_id"] in printed
    altered = tmp_path / "altered.png"
    altered.write_bytes(open(files["plain.png"], "rb").read() + b"\0")  # one byte more
    assert cli.main(["provenance", str(altered), "--out", str(out)]) == 1
    assert "stats: no row under" in capsys.readouterr().out


@pytest.mark.slow
def test_provenance_none_writes_none_and_hash_names_no_path(ray_local, tmp_path):
    from sr_batch.pipeline import run_job

    source = _sources(tmp_path / "in")
    none_out, hash_out = tmp_path / "none", tmp_path / "hash"
    run_job(JobConfig(sources=(str(source),), output=str(none_out), model="residual",
                      provenance="none", run_id="none-1"), echo=lambda line: None)
    rows = stats.read_stats(str(none_out)).to_pylist()
    assert {r["provenance"] for r in rows} == {"none"} and len(rows) == 5
    outputs = [r["output_uri"].removeprefix("file://") for r in rows]
    for tags in exiftool(*outputs):
        assert not any(k.startswith(("XMP-srbatch", "XMP-iptcExt", "XMP-xmpMM")) for k in tags), tags
    for row, path in zip(rows, outputs):
        assert row["output_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()

    run_job(JobConfig(sources=(str(source),), output=str(hash_out), model="residual",
                      provenance_source="hash", run_id="hash-1"), echo=lambda line: None)
    for row in stats.read_stats(str(hash_out)).to_pylist():
        data = open(row["output_uri"].removeprefix("file://"), "rb").read()
        assert str(source).encode() not in data
        assert provenance.describe(provenance.read_xmp(data))["SourceSHA256"] == row["source_sha256"]


def test_a_streamed_tiff_carries_provenance(tmp_path):
    """Above --max-pixels a TIFF is streamed block by block: its XMP goes in tag 700 all the same,
    the source's own XMP kept, and both hashes are in the row."""
    from sr_batch.actor import UpscaleActor
    from sr_batch.settings import ActorSettings
    from sr_batch.layout import OutLayout
    from sr_batch.models.registry import bicubic_spec
    from sr_batch.tiling import Tiling

    source = tmp_path / "big.tif"
    tifffile.imwrite(source, scene(64, 80), photometric="rgb", tile=(32, 32), metadata=None,
                     extratags=[(700, "B", len(SOURCE_XMP), SOURCE_XMP, True)])
    layout = OutLayout.of(str(tmp_path / "out"))
    settings = ActorSettings(model=bicubic_spec(2), scale=2, tiling=Tiling((32,), 2), layout=layout,
                             batch_size=4, format="keep", quality=95, png_compress_level=1,
                             max_pixels=1000, retries=0, intra_op_threads=1, run_id="big-1")
    row = {"image_id": "big", "uri": str(source), "output_exts": ["tif"],
           "output_uris": [layout.images + "/big.tif"]}
    [result] = UpscaleActor(settings)(pa.Table.from_pylist([row])).to_pylist()
    assert result["status"] == "ok" and "streamed" in result["notes"]
    data = open(result["output_uri"].removeprefix("file://"), "rb").read()
    assert result["output_sha256"] == hashlib.sha256(data).hexdigest()
    assert result["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    [tags] = exiftool(result["output_uri"].removeprefix("file://"))
    assert tags["XMP-iptcExt:DigitalSourceType"] == TERM
    assert tags["XMP-srbatch:OutputSize"] == "160x128" and tags["XMP-srbatch:RunID"] == "big-1"
    assert tags["XMP-srbatch:SourceSHA256"] == result["source_sha256"]
    assert tags["XMP-dc:Creator"] == ["Jane Archivist"]


def test_an_oversize_source_xmp_in_a_jpeg_output_gives_ours_alone():
    """One JPEG APP1 segment holds 64 KB of XMP: a bigger source packet cannot come along."""
    from sr_batch import steps

    big = SOURCE_XMP.replace(b"Jane Archivist", b"J" * 70_000)
    xmp, note = provenance.build_xmp(making(), big)
    assert len(xmp) > JPEG_XMP_MAX and note is None
    notes: list[str] = []
    xmp = steps.output_xmp(making(), big, "jpeg", notes)
    assert len(xmp) <= JPEG_XMP_MAX and "too large for a JPEG XMP segment" in notes[0]
    data = encode_image(scene(48, 64), None, "jpeg", xmp=xmp)
    assert provenance.describe(provenance.read_xmp(data))["RunID"] == "r-1"
    assert len(steps.output_xmp(making(), big, "png", notes)) > 70_000  # PNG holds it all


# --- C2PA ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signing_files(tmp_path_factory):
    """A test CA and a signing certificate it issued (ES256), made here: (chain.pem, key.pem)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sr-batch tests")])

    def usage(**on) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                               "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**{**flags, **on})

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def certificate(subject, issuer, public, signer, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(key_cert_sign=True, crl_sign=True) if ca
                                  else usage(digital_signature=True), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                             critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                      critical=False))
        return builder.sign(signer, hashes.SHA256())

    ca = certificate(name("sr-batch test CA"), name("sr-batch test CA"), ca_key.public_key(), ca_key, True)
    leaf = certificate(name("sr-batch test signer"), ca.subject, key.public_key(), ca_key, False)
    folder = tmp_path_factory.mktemp("c2pa")
    chain, key_file = folder / "chain.pem", folder / "key.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return chain, key_file


def _action(read: dict) -> dict:
    [actions] = [a for a in read["manifest"]["assertions"] if a["label"].startswith("c2pa.actions")]
    return {a["action"]: a for a in actions["data"]["actions"]}


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
def test_c2pa_manifest_signs_and_reads_back_valid(signing_files, fmt):
    signing = provenance.load_signing(f"{signing_files[0]},{signing_files[1]}")
    xmp, _ = provenance.build_xmp(making(), None)
    data = encode_image(scene(48, 64), None, fmt, xmp=xmp)
    source = encode_image(scene(24, 32), None, "jpeg")

    signed = provenance.sign_c2pa(data, fmt, making(), source, "JPEG", signing)

    read = provenance.read_c2pa(signed, fmt)
    assert read["validation_state"] == "Valid"  # our test CA is no trust anchor: not "Trusted"
    resized = _action(read)["c2pa.resized"]
    assert resized["digitalSourceType"] == TERM
    assert resized["parameters"]["model_sha256"] == "b" * 64
    assert resized["parameters"]["source_sha256"] == "a" * 64
    [ingredient] = read["manifest"]["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["title"] == "scan-0042.jpg"
    assert provenance.read_xmp(signed) == xmp  # the XMP is still there
    assert len(signed) - len(data) < 16_000  # no thumbnails: a few KB
    # One byte of the image changed (outside the manifest, which went in between the bytes of
    # `data`), and the file no longer validates.
    import c2pa

    head = next(i for i, (a, b) in enumerate(zip(data, signed)) if a != b)
    tail = next(i for i, (a, b) in enumerate(zip(data[::-1], signed[::-1])) if a != b)
    where = head // 2 if head > tail else len(signed) - 1 - tail // 2
    tampered = bytearray(signed)
    tampered[where] ^= 0xFF
    try:
        state = provenance.read_c2pa(bytes(tampered), fmt)["validation_state"]
    except c2pa.C2paError:
        state = "unreadable"
    assert state not in ("Valid", "Trusted"), (where, head, tail)


def test_c2pa_sign_refuses_what_cannot_sign(signing_files, tmp_path):
    chain, key = signing_files
    with pytest.raises(ConfigError, match="CERT,KEY"):
        JobConfig(sources=("in",), output="out", c2pa_sign=str(chain))
    with pytest.raises(ConfigError, match="drop --provenance none"):
        JobConfig(sources=("in",), output="out", c2pa_sign=f"{chain},{key}", provenance="none")
    with pytest.raises(ConfigError, match="--c2pa-sign"):
        provenance.load_signing(f"{chain},{tmp_path / 'missing.pem'}")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot sign"):
        provenance.load_signing(f"{tmp_path / 'junk.pem'},{key}")


@pytest.mark.slow
def test_the_job_signs_c2pa_beside_the_xmp(ray_local, signing_files, tmp_path, capsys):
    from sr_batch.pipeline import run_job

    source, out = _sources(tmp_path / "in"), tmp_path / "out"
    result = run_job(JobConfig(sources=(str(source),), output=str(out), model="residual", run_id="c2pa-1",
                               c2pa_sign=f"{signing_files[0]},{signing_files[1]}"), echo=lambda line: None)
    assert result.counts == {"ok": 5}
    rows = stats.read_stats(str(out)).to_pylist()
    assert {r["provenance"] for r in rows} == {"c2pa"}
    for row in rows:
        path = row["output_uri"].removeprefix("file://")
        data = open(path, "rb").read()
        assert row["output_sha256"] == hashlib.sha256(data).hexdigest()
        read = provenance.read_c2pa(data, row["format"])
        assert read["validation_state"] == "Valid"
        params = _action(read)["c2pa.resized"]["parameters"]
        assert params["run_id"] == "c2pa-1" and params["source_sha256"] == row["source_sha256"]
        assert params["model_sha256"] == row["model_sha256"]
        [tags] = exiftool(path)
        assert tags["XMP-srbatch:RunID"] == "c2pa-1"
    png = next(r for r in rows if r["format"] == "png")["output_uri"].removeprefix("file://")
    assert cli.main(["provenance", png, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "c2pa: Valid (signingCredential.untrusted)" in printed and "c2pa action: c2pa.resized" in printed
    assert "c2pa ingredient: plain.png (parentOf)" in printed
