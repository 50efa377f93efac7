"""What an output says about its making: an XMP packet (IPTC Digital Source Type, xmpMM
DerivedFrom and History, and sr-batch's own fields) built from the source's XMP and the run.

The packet is built and parsed with ElementTree; a source's XMP is untrusted input and is
parsed through defusedxml (no DTDs, no entities). A source packet that cannot be parsed
never fails the image: the output gets sr-batch's packet alone, and a note says so.
encode.encode_image embeds the packet; docs/formats.md ("Provenance") lists the fields.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from sr_batch import __version__

MODES = ("xmp", "none")
"""--provenance: embed an XMP packet, or write the file with none."""
SOURCE_MODES = ("uri", "hash")
"""--provenance-source: name the source by its URI and SHA-256, or by its SHA-256 alone."""
# IPTC Digital Source Type "algorithmicallyEnhanced": an algorithm modified the whole captured
# picture without changing what it shows (docs/formats.md says why this term).
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicallyEnhanced"
SOFTWARE_AGENT = f"sr-batch {__version__}"

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "srbatch": "http://ns.sr-batch.org/provenance/1.0/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

# The properties sr-batch states about the output: a source's own values of these describe the
# source, not the output, so they are replaced (the source's ids move into DerivedFrom).
_OWNED = {f"{{{NS['Iptc4xmpExt']}}}DigitalSourceType", f"{{{NS['xmpMM']}}}DerivedFrom",
          f"{{{NS['xmpMM']}}}DocumentID", f"{{{NS['xmpMM']}}}InstanceID",
          f"{{{NS['xmpMM']}}}OriginalDocumentID"}
_XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_XPACKET_END = '<?xpacket end="r"?>'
# A source's own prefix is reused where it is a plain name that clashes with none registered.
_PREFIX_OK = re.compile(r"[A-Za-z_][\w.-]{0,40}\Z")
# ElementTree's prefix registry is one per process: sources cannot grow it without bound (past
# this, a source's other namespaces are written as ns0, ns1, ... : the same XMP, other prefixes).
_MAX_PREFIXES = 256


@dataclass(frozen=True)
class Making:
    """What made one output: the facts its XMP states."""

    source_uri: str | None
    """The source's URI; None under --provenance-source hash."""
    source_sha256: str | None
    """SHA-256 of the source's bytes."""
    model: str
    model_sha256: str
    """As the stats' model_sha256 (for a mild/strong pair, the hash of both files' hashes)."""
    scale: int
    out_width: int
    out_height: int
    denoise: float | None
    route: str | None
    run_id: str
    when: str
    """ISO 8601 UTC time of the write."""

    @property
    def parameters(self) -> str:
        """The History event's parameters, one line for a reader of the file."""
        parts = [f"upscaled x{self.scale} by model {self.model} (sha256 {self.model_sha256})",
                 f"to {self.out_width}x{self.out_height}"]
        if self.denoise is not None:
            parts.append(f"denoise {self.denoise:g}")
        if self.route:
            parts.append(f"route {self.route}")
        parts.append(f"run {self.run_id}")
        return ", ".join(parts)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_stream(handle, chunk: int = 1 << 20) -> str:
    """SHA-256 of a binary file object read from its start to its end, `chunk` bytes at a time."""
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def build_xmp(making: Making, source_xmp: bytes | None) -> tuple[bytes, str | None]:
    """(the output's XMP packet, a note or None): the source's packet kept and extended, or
    sr-batch's alone with a note where the source's cannot be parsed."""
    note = None
    root = None
    if source_xmp:
        try:
            root = _parse(source_xmp)
        except (ET.ParseError, DefusedXmlException, ValueError, UnicodeError) as exc:
            note = f"source XMP unreadable ({' '.join(str(exc).split())[:80]}): replaced by sr-batch's"
    if root is None:
        root = ET.Element(_q("x", "xmpmeta"))
        ET.SubElement(root, _q("rdf", "RDF"))
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if root.tag == _q("rdf", "RDF"):  # a bare rdf:RDF: give it its x:xmpmeta wrapper
        wrapper = ET.Element(_q("x", "xmpmeta"))
        wrapper.append(root)
        root = wrapper
    source_ids = _take_owned(rdf)
    _describe(rdf, making, source_ids)
    text = ET.tostring(root, encoding="unicode")
    return (_XPACKET_BEGIN + text + _XPACKET_END).encode("utf-8"), note


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def _parse(packet: bytes) -> ET.Element:
    """The source packet's root (x:xmpmeta or rdf:RDF), through defusedxml; ValueError when
    it holds no rdf:RDF. Its own prefixes are kept where they clash with none of ours."""
    text = packet.decode("utf-8") if isinstance(packet, bytes) else str(packet)
    text = text.lstrip("\ufeff")
    for _, (prefix, uri) in DET.iterparse(io.StringIO(text), events=("start-ns",)):
        if (prefix and _PREFIX_OK.match(prefix) and not prefix.startswith("ns")
                and len(ET._namespace_map) < _MAX_PREFIXES
                and prefix not in ET._namespace_map.values() and uri not in ET._namespace_map):
            ET.register_namespace(prefix, uri)
    root = DET.fromstring(text)
    if root.tag == _q("rdf", "RDF"):
        return root
    if root.find(_q("rdf", "RDF")) is None:
        raise ValueError(f"no rdf:RDF in the packet (root {root.tag[:60]})")
    return root


def _take_owned(rdf: ET.Element) -> dict[str, str]:
    """Remove the properties sr-batch states about the output from every rdf:Description (as
    elements or attributes); return the source's DocumentID and InstanceID."""
    ids: dict[str, str] = {}
    for desc in rdf.findall(_q("rdf", "Description")):
        for key in list(desc.attrib):
            if key in _OWNED:
                ids[key] = desc.attrib.pop(key)
        for child in list(desc):
            if child.tag in _OWNED:
                if child.text and child.text.strip():
                    ids[child.tag] = child.text.strip()
                desc.remove(child)
    return ids


def _describe(rdf: ET.Element, making: Making, source_ids: dict[str, str]) -> None:
    """Add sr-batch's rdf:Description, and append the event to the History (the source's, or new)."""
    desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    _text(desc, "Iptc4xmpExt", "DigitalSourceType", DIGITAL_SOURCE_TYPE)
    instance = f"xmp.iid:{uuid.uuid4()}"  # a new document: XMP's ids are random UUIDs
    _text(desc, "xmpMM", "DocumentID", instance.replace("xmp.iid:", "xmp.did:"))
    _text(desc, "xmpMM", "InstanceID", instance)
    derived = ET.SubElement(desc, _q("xmpMM", "DerivedFrom"), {_q("rdf", "parseType"): "Resource"})
    if making.source_uri is not None:
        _text(derived, "stRef", "filePath", making.source_uri)
    for key, name in ((_q("xmpMM", "DocumentID"), "documentID"), (_q("xmpMM", "InstanceID"), "instanceID")):
        if key in source_ids:
            _text(derived, "stRef", name, source_ids[key])
    fields = {
        "SourceSHA256": making.source_sha256, "SoftwareAgent": SOFTWARE_AGENT,
        "Model": making.model, "ModelSHA256": making.model_sha256, "Scale": str(making.scale),
        "OutputSize": f"{making.out_width}x{making.out_height}",
        "Denoise": None if making.denoise is None else f"{making.denoise:g}",
        "Route": making.route, "RunID": making.run_id,
    }
    if making.source_uri is not None:
        fields = {"SourceURI": making.source_uri, **fields}
    for name, value in fields.items():
        if value is not None:
            _text(desc, "srbatch", name, value)
    seq = _history(rdf, desc)
    event = ET.SubElement(seq, _q("rdf", "li"), {_q("rdf", "parseType"): "Resource"})
    _text(event, "stEvt", "action", "derived")
    _text(event, "stEvt", "parameters", making.parameters)
    _text(event, "stEvt", "softwareAgent", SOFTWARE_AGENT)
    _text(event, "stEvt", "when", making.when)
    _text(event, "stEvt", "instanceID", instance)


def _history(rdf: ET.Element, ours: ET.Element) -> ET.Element:
    """The rdf:Seq of the source's xmpMM:History, or a new one in our Description."""
    for desc in rdf.findall(_q("rdf", "Description")):
        history = desc.find(_q("xmpMM", "History"))
        if history is not None:
            seq = history.find(_q("rdf", "Seq"))
            if seq is not None:
                return seq
            desc.remove(history)  # a History that is no Seq is not XMP's: ours replaces it
    return ET.SubElement(ET.SubElement(ours, _q("xmpMM", "History")), _q("rdf", "Seq"))


def _text(parent: ET.Element, prefix: str, name: str, value: str) -> ET.Element:
    element = ET.SubElement(parent, _q(prefix, name))
    element.text = value
    return element


# --- reading back ------------------------------------------------------------------------


def read_xmp(data: bytes) -> bytes | None:
    """The XMP packet a PNG, JPEG, WebP or TIFF file holds, or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    except Exception:  # noqa: BLE001 - e.g. a 16-bit TIFF Pillow cannot open: ask tifffile
        xmp = None
    from sr_batch.decode import tiff_xmp, xmp_bytes

    if xmp is None and data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return tiff_xmp(tif)
    return xmp_bytes(xmp)


def describe(xmp: bytes) -> dict[str, object]:
    """The making a packet states: DigitalSourceType, DerivedFrom, sr-batch's fields and the
    History events (each a dict), as read from the packet (defusedxml)."""
    root = _parse(xmp)
    found: dict[str, object] = {}
    history: list[dict[str, str]] = []
    for desc in root.iter(_q("rdf", "Description")):
        for key, value in desc.attrib.items():
            found[_local(key)] = value
        for child in desc:
            if child.tag == _q("xmpMM", "History"):
                for li in child.iter(_q("rdf", "li")):
                    history.append({_local(e.tag): (e.text or "") for e in li})
            elif child.tag == _q("xmpMM", "DerivedFrom"):
                found["DerivedFrom"] = {_local(e.tag): (e.text or "") for e in child}
            elif len(child) == 0 and child.text:
                found[_local(child.tag)] = child.text.strip()
    found.pop("about", None)
    found["History"] = history
    return found


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# What `sr-batch provenance` prints, in this order: (label, key in describe()'s dict).
_SHOWN = (("digital source type", "DigitalSourceType"), ("software", "SoftwareAgent"),
          ("source", "SourceURI"), ("source sha256", "SourceSHA256"), ("model", "Model"),
          ("model sha256", "ModelSHA256"), ("scale", "Scale"), ("output size", "OutputSize"),
          ("denoise", "Denoise"), ("route", "Route"), ("run", "RunID"))


def report(uri: str, output: str | None = None, retries: int = 3) -> tuple[list[str], bool]:
    """(the lines `sr-batch provenance` prints for the file at `uri`, whether it checks out):
    what the file's XMP says about its making, its SHA-256, and with `output` the stats row
    under OUT whose output_sha256 it matches (checks out: a row matches; no `output`: always)."""
    from sr_batch import storage

    data = storage.read_bytes(uri, retries)
    digest = sha256_hex(data)
    lines = [f"file: {storage.display(uri)}", f"sha256: {digest}"]
    try:
        xmp = read_xmp(data)
    except Exception as exc:  # noqa: BLE001 - a file this cannot open says nothing, and that is the answer
        xmp = None
        lines.append(f"xmp: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})")
    if xmp is None:
        lines.append("xmp: none (nothing in the file says how it was made)")
    else:
        try:
            said = describe(xmp)
        except (ET.ParseError, DefusedXmlException, ValueError, UnicodeError) as exc:
            said = None
            lines.append(f"xmp: unreadable ({' '.join(str(exc).split())[:80]})")
        if said is not None:
            lines += [f"{label}: {said[key]}" for label, key in _SHOWN if key in said]
            derived = said.get("DerivedFrom") or {}
            if "SourceURI" not in said and "filePath" in derived:
                lines.append(f"source: {derived['filePath']}")
            for event in said["History"]:
                lines.append("history: " + ", ".join(f"{k}={v}" for k, v in event.items()
                                                      if k in ("action", "when", "softwareAgent", "parameters")))
            if "RunID" not in said:
                lines.append("xmp: no sr-batch fields (not written by sr-batch, or written with --provenance none)")
    lines += _c2pa_lines(data)
    if output is None:
        return lines, True
    matched, found = _stats_match(output, digest)
    return lines + matched, found


def _c2pa_lines(data: bytes) -> list[str]:
    """What the file's C2PA manifest says, as the c2pa library reads and validates it (the `c2pa`
    extra); nothing where the library is not installed."""
    try:
        import c2pa
    except ImportError:
        return []
    try:
        read = read_c2pa(data)
    except c2pa.C2paError:
        return ["c2pa: none"]
    manifest = read["manifest"]
    problems = ", ".join(status["code"] for status in read["validation_status"])
    lines = [f"c2pa: {read['validation_state']}" + (f" ({problems})" if problems else "")
             + f", signed by {(manifest.get('signature_info') or {}).get('issuer', '?')}"]
    for assertion in manifest.get("assertions", []):
        if assertion["label"].startswith("c2pa.actions"):
            for action in assertion["data"].get("actions", []):
                lines.append(f"c2pa action: {action['action']} {json.dumps(action.get('parameters', {}))}")
    lines += [f"c2pa ingredient: {i.get('title')} ({i.get('relationship')})"
              for i in manifest.get("ingredients", [])]
    return lines


def _stats_match(output: str, digest: str) -> tuple[list[str], bool]:
    import pyarrow.dataset as ds

    from sr_batch import stats, storage

    parts = stats.dataset(output)
    rows = [] if parts is None else parts.to_table(
        columns=["run_id", "image_id", "source_uri", "output_uri", "finished_at"],
        filter=(ds.field("output_sha256") == digest) & (ds.field("status") == stats.STATUS_OK)).to_pylist()
    if not rows:
        return [f"stats: no row under {storage.display(output)} has this sha256"], False
    return [f"stats: matches run {r['run_id']}, image {r['image_id']} ({storage.display(r['source_uri'])} -> "
            f"{storage.display(r['output_uri'])}, {r['finished_at']:%Y-%m-%d %H:%M:%S} UTC)" for r in rows], True


# --- C2PA Content Credentials (the `c2pa` extra) -------------------------------------------

_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff"}
# No thumbnails: an archive has the image itself; a thumbnail of the output and of the source
# would add tens to hundreds of KB to every file.
_C2PA_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}
# Reader states of a manifest whose signature and hashes check out (Trusted: its certificate
# chains to a trust anchor the reader was given as well).
_VALID_STATES = ("Valid", "Trusted")


@dataclass(frozen=True)
class Signing:
    """--c2pa-sign: the PEM certificate chain and private key the manifests are signed with."""

    certificate: bytes
    key: bytes

    def __repr__(self) -> str:  # never print a private key
        return f"Signing(certificate={len(self.certificate)} bytes, key=...)"


def load_signing(spec: str, retries: int = 3) -> Signing:
    """--c2pa-sign CERT,KEY: read both PEM files (paths or URIs) and prove they sign (ES256, ES384,
    ES512, PS256 or Ed25519, by the key) a manifest that reads back valid; ConfigError, one
    line, where they cannot."""
    from sr_batch import storage
    from sr_batch.errors import ConfigError, SrBatchError

    cert_uri, key_uri = spec.split(",", 1)
    try:
        signing = Signing(storage.read_bytes(cert_uri, retries), storage.read_bytes(key_uri, retries))
    except SrBatchError as exc:
        raise ConfigError(f"--c2pa-sign: {exc}") from None
    try:
        # A trial signature of a 1x1 PNG, read back: c2pa takes a wrong certificate until it signs.
        import numpy as np

        from sr_batch.encode import encode_image

        pixel = encode_image(np.zeros((1, 1, 1), np.uint8), None, "png")
        trial = Making(None, sha256_hex(pixel), "trial", "0" * 64, 2, 1, 1, None, None, "trial", "")
        sign_c2pa(pixel, "png", trial, pixel, "PNG", signing)
    except ImportError:
        raise ConfigError("--c2pa-sign needs the c2pa extra: pip install 'sr-batch[c2pa]'") from None
    except Exception as exc:  # noqa: BLE001 - c2pa raises its own C2paError subclasses
        raise ConfigError(f"--c2pa-sign: {storage.display(cert_uri)} and {storage.display(key_uri)} "
                          f"cannot sign: {' '.join(str(exc).split())[:160]}") from None
    return signing


def _signer(signing: Signing):
    import c2pa
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = serialization.load_pem_private_key(signing.key, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {256: "ES256", 384: "ES384", 521: "ES512"}[key.curve.key_size]
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "PS256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "Ed25519"
    else:
        raise ValueError(f"unsupported key type {type(key).__name__}")
    info = c2pa.C2paSignerInfo(getattr(c2pa.C2paSigningAlg, alg.upper()), signing.certificate,
                               signing.key, None)
    return c2pa.Signer.from_info(info)


def sign_c2pa(data: bytes, fmt: str, making: Making, source: bytes, source_format: str | None,
              signing: Signing) -> bytes:
    """`data` (an encoded output) with a signed C2PA manifest: the same facts as the XMP in a
    `c2pa.actions.v2` assertion, the source as its `parentOf` ingredient; read back and checked
    before it is returned (ProvenanceError where the manifest does not validate)."""
    import json

    import c2pa

    from sr_batch.errors import ProvenanceError

    parameters = {"model": making.model, "model_sha256": making.model_sha256, "scale": making.scale,
                  "output_size": f"{making.out_width}x{making.out_height}", "run_id": making.run_id,
                  "source_sha256": making.source_sha256}
    if making.denoise is not None:
        parameters["denoise"] = making.denoise
    if making.route:
        parameters["route"] = making.route
    source_ref = {"title": "source", "relationship": "parentOf", "label": "source"}
    if making.source_uri is not None:
        parameters["source_uri"] = making.source_uri
        source_ref["title"] = making.source_uri.rsplit("/", 1)[-1] or "source"
    manifest = {
        "claim_generator_info": [{"name": "sr-batch", "version": __version__}],
        "title": f"upscaled x{making.scale}",
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": ["source"]}},
            {"action": "c2pa.resized", "digitalSourceType": DIGITAL_SOURCE_TYPE,
             "softwareAgent": {"name": "sr-batch", "version": __version__},
             "when": making.when, "parameters": parameters}]}}]}
    context = c2pa.Context(c2pa.Settings.from_json(json.dumps(_C2PA_SETTINGS)))
    signed = io.BytesIO()
    try:
        with c2pa.Builder(manifest, context=context) as builder:
            builder.add_ingredient(source_ref, _MIME.get((source_format or "").lower(), "image/png"),
                                   io.BytesIO(source))
            builder.sign(_signer(signing), _MIME[fmt], io.BytesIO(data), signed)
        state = read_c2pa(signed.getvalue(), fmt)["validation_state"]
    except c2pa.C2paError as exc:
        raise ProvenanceError(f"C2PA signing failed: {' '.join(str(exc).split())[:200]}") from None
    if state not in _VALID_STATES:
        raise ProvenanceError(f"C2PA manifest written but it reads back {state}, not valid")
    return signed.getvalue()


def read_c2pa(data: bytes, fmt: str | None = None) -> dict:
    """The active C2PA manifest of a file, as the c2pa library reads and validates it:
    {"validation_state", "validation_status", "manifest"}; raises c2pa.C2paError without one."""
    import c2pa

    with c2pa.Reader(_MIME.get(fmt or "", None), io.BytesIO(data)) as reader:
        store = json.loads(reader.json())
    return {"validation_state": store.get("validation_state"),
            "validation_status": store.get("validation_status") or [],
            "manifest": store["manifests"][store["active_manifest"]]}
