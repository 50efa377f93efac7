"""What provenance costs per image: time and bytes of the XMP packet, per output format.

    python bench/bench_provenance.py                   # demo images, x2 bicubic outputs
    python bench/bench_provenance.py /data/Set14/HR    # your own images instead

For outputs of 1 MP and 4 MP (x2 bicubic upscales of the images, tiled), each format the job
writes (PNG level 1, JPEG and WebP at quality 95, TIFF), it prints:

  - encode_s: the encode without provenance (--provenance none);
  - xmp_s: building the packet (provenance.build_xmp, over a source packet of a few hundred
    bytes) plus the encode's extra time for carrying it;
  - sha_s: SHA-256 of the source (a quarter of the output's pixels, PNG) and of the output, which
    the job computes for the stats whatever --provenance says;
  - bytes_added: output size with the packet minus without;
  - with --c2pa (the c2pa extra): c2pa_s, signing a C2PA manifest with the source as its
    ingredient and reading it back (a throwaway test CA made here with `cryptography`), and
    c2pa_bytes, what it adds beyond the XMP;
  - xmp_e2e, sha_e2e: xmp_s and sha_s over the image's end-to-end time in the job, its output
    megapixels at --e2e-mp-s (default 6.10: the fastest e2e rate in docs/benchmarks.md's CPU
    table, residual bf16 on 512² images, where this share is largest).

Every time is CPU time of this process (not wall time: other work on a shared machine does not
count), the best of --repeats after one warm-up call, the encodes with and without the packet
alternated; a difference below the timer's noise prints as 0. One process, one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_batch import encode, provenance  # noqa: E402
from common import best_of, upscaled_outputs  # noqa: E402

SOURCE_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmpMM:DocumentID="xmp.did:scan-0042">'
    '<dc:creator><rdf:Seq><rdf:li>Jane Archivist</rdf:li></rdf:Seq></dc:creator>'
    '</rdf:Description></rdf:RDF></x:xmpmeta>').encode()


def test_signing() -> provenance.Signing:
    """A throwaway CA and an ES256 signing certificate it issued, as --c2pa-sign would load."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                           "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                           "encipher_only", "decipher_only"), False)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])

    def issue(subject, public, ca: bool):
        usage = {**flags, **({"key_cert_sign": True, "crl_sign": True} if ca else {"digital_signature": True})}
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(**usage), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))
        return builder.sign(ca_key, hashes.SHA256())

    ca = issue(ca_name, ca_key.public_key(), True)
    leaf = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench signer")]), key.public_key(), False)
    pem = serialization.Encoding.PEM
    return provenance.Signing(leaf.public_bytes(pem) + ca.public_bytes(pem),
                              key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))


def paired_best(plain, embedded, repeats: int) -> tuple[float, float]:
    """The fastest of `repeats` calls of each, alternated so that a busy spell of a shared machine
    slows both alike (after one warm-up call of each)."""
    plain(), embedded()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((plain, embedded)):
            began = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - began)
    return best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=None, help="images to upscale (default: demo images)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--c2pa", action="store_true", help="also time C2PA signing (the c2pa extra)")
    parser.add_argument("--e2e-mp-s", type=float, default=6.10,
                        help="the job's end-to-end output MP/s, for share_e2e (default 6.10)")
    args = parser.parse_args()
    outputs = upscaled_outputs(args.folder, (1024, 2048))
    signing = test_signing() if args.c2pa else None
    print(f"{'output':>8} {'format':>6} {'encode_s':>9} {'xmp_s':>9} {'sha_s':>9} "
          f"{'bytes_added':>11} {'xmp_e2e':>8} {'sha_e2e':>8}"
          + (f" {'c2pa_s':>8} {'c2pa_bytes':>10} {'c2pa_e2e':>8}" if signing else ""))
    for size, pixels in outputs.items():
        source = encode.encode_image(np.ascontiguousarray(pixels[::2, ::2]), None, "png")
        megapixels = pixels.shape[0] * pixels.shape[1] / 1e6
        making = provenance.Making(
            source_uri="s3://archive/scans/1962/scan-0042.png", source_sha256=provenance.sha256_hex(source),
            model="fsrcnn", model_sha256="0" * 64, scale=2, out_width=pixels.shape[1],
            out_height=pixels.shape[0], denoise=None, route=None, run_id="20261205T160000-abc123",
            when=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        for fmt in ("png", "jpeg", "webp", "tiff"):
            plain = encode.encode_image(pixels, None, fmt)
            xmp, _ = provenance.build_xmp(making, SOURCE_XMP)
            with_xmp = encode.encode_image(pixels, None, fmt, xmp=xmp)
            encode_s, embedded_s = paired_best(
                lambda: encode.encode_image(pixels, None, fmt),
                lambda: encode.encode_image(pixels, None, fmt, xmp=provenance.build_xmp(making, SOURCE_XMP)[0]),
                args.repeats)
            sha_s = best_of(lambda: (provenance.sha256_hex(source), provenance.sha256_hex(with_xmp)),
                            args.repeats, clock=time.process_time)
            xmp_s = max(0.0, embedded_s - encode_s)
            e2e_s = megapixels / args.e2e_mp_s
            line = (f"{size:>8} {fmt:>6} {encode_s:9.4f} {xmp_s:9.5f} {sha_s:9.5f} "
                    f"{len(with_xmp) - len(plain):11d} {xmp_s / e2e_s:8.2%} {sha_s / e2e_s:8.2%}")
            if signing:
                def sign():
                    return provenance.sign_c2pa(with_xmp, fmt, making, source, "PNG", signing)
                c2pa_s = best_of(sign, max(3, args.repeats // 3), clock=time.process_time)
                line += f" {c2pa_s:8.4f} {len(sign()) - len(with_xmp):10d} {c2pa_s / e2e_s:8.2%}"
            print(line)
    build_s = best_of(lambda: provenance.build_xmp(making, SOURCE_XMP), args.repeats * 20,
                      clock=time.process_time)
    print(f"build_xmp alone: {build_s * 1e6:.0f} us a packet of {len(xmp)} bytes")


if __name__ == "__main__":
    main()
