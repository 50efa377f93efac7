"""What an output says about its making: an XMP packet (IPTC Digital Source Type, xmpMM
DerivedFrom and History, and sr-batch's own fields) built from the source's XMP and the run.

The packet is built and parsed with ElementTree; a source's XMP is untrusted input and is
parsed through defusedxml (no DTDs, no entities). A source packet that cannot be parsed
never fails the image: the output gets sr-batch's packet alone, and a note says so.
images.encode_image embeds the packet; docs/formats.md ("Provenance") lists the fields.
"""

from __future__ import annotations

import hashlib
import io
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
# A few registered prefixes must keep their meaning in every packet this process writes.
_PREFIX_OK = re.compile(r"[A-Za-z_][\w.-]{0,40}\Z")


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
    if xmp is None and data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            xmp = tif.pages.first.tags.valueof(700)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return bytes(xmp) if xmp else None


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
    if output is None:
        return lines, True
    matched, found = _stats_match(output, digest)
    return lines + matched, found


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
