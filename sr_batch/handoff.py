"""The staged arrangement's hand-off: Works as Arrow rows through Ray's object store.

The pixels travel as their uint8/uint16 bytes (one large_binary column per array, one copy
each way), never as float; everything else of a Work (row, stats, metadata, array shapes) is
pickled beside them. Works that are finished carry no arrays.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pyarrow as pa

from sr_batch.work import Work

_ARRAYS = ("pixels", "alpha", "output", "output_alpha")


def to_arrow(works: list[Work]) -> pa.Table:
    """Works as Arrow rows: every array's bytes in one large_binary column (one copy), the rest
    (rows, stats, metadata, array shapes) pickled beside them; finished works carry no arrays."""
    columns: dict[str, list] = {name: [] for name in _ARRAYS}
    states = []
    for w in works:
        arrays = {"pixels": w.decoded.pixels if w.decoded else None,
                  "alpha": w.decoded.alpha if w.decoded else None,
                  "output": w.output, "output_alpha": w.alpha}
        shapes = {}
        for name, array in arrays.items():
            columns[name].append(None if array is None else np.ascontiguousarray(array))
            shapes[name] = None if array is None else (array.shape, array.dtype.str)
        decoded = replace(w.decoded, pixels=None, alpha=None) if w.decoded else None
        state = replace(w, decoded=decoded, output=None, alpha=None)
        states.append(pickle.dumps((state, shapes), protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table({"state": pa.array(states, pa.binary()),
                     **{name: _binary_column(columns[name]) for name in _ARRAYS}})


def from_arrow(table: pa.Table) -> list[Work]:
    """The Works of `to_arrow`; arrays are views of the Arrow buffers (no copy)."""
    works = []
    columns = {name: table.column(name) for name in _ARRAYS}
    for i, blob in enumerate(table.column("state").to_pylist()):
        w, shapes = pickle.loads(blob)
        arrays = {name: None if shapes[name] is None else
                  np.frombuffer(columns[name][i].as_buffer(), np.dtype(shapes[name][1])).reshape(shapes[name][0])
                  for name in _ARRAYS}
        if w.decoded is not None:
            w.decoded = replace(w.decoded, pixels=arrays["pixels"], alpha=arrays["alpha"])
        w.output, w.alpha = arrays["output"], arrays["output_alpha"]
        works.append(w)
    return works


def _binary_column(arrays: list[np.ndarray | None]) -> pa.Array:
    """One large_binary array over the arrays' bytes, built with a single copy into one buffer."""
    sizes = np.array([0 if a is None else a.nbytes for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    data = np.empty(int(offsets[-1]), np.uint8)
    for array, start in zip(arrays, offsets[:-1]):
        if array is not None:
            data[start:start + array.nbytes] = array.reshape(-1).view(np.uint8)
    valid = np.array([a is not None for a in arrays])
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(arrays),
                                            [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                            null_count=int((~valid).sum()))
