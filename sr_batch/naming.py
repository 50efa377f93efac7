"""Every manifest row's output names, decided before any image runs.

    plan_outputs(table, layout, --format) adds each row's output names (the planned one,
    then its fallbacks) or the reason it has none (output_collision, path_escape);
    planned_outputs_column and keep_planned_outputs carry those names through a manifest
    (nightly, --plan-manifest), so that a later run keeps them.

The plan (plan.py) calls it once a run; it runs in the driver only.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sr_batch import storage
from sr_batch.errors import ImageError, ManifestError, PathEscapeError
from sr_batch.formats import EXTENSION_FORMAT, output_extensions
from sr_batch.layout import OutLayout

# Relative paths that column-wise naming leaves to OutLayout.image_path, one row at a time:
# empty or absolute paths, `//`, `\\`, `::` (fsspec's chaining), `?` and `#`, `.` or `..`
# parts, a final `/`, file names that start with a dot (where posixpath.splitext finds
# another extension than the text after the last dot), and NUL bytes (which no path holds).
_UNUSUAL_RELATIVE = r"^$|^/|//|/$|\\|::|[?#\x00]|(?:^|/)\.\.?(?:/|$)|(?:^|/)\.[^/]*$"


def plan_outputs(table: pa.Table, layout: OutLayout, requested: str, *,
                 one_by_one: bool = False) -> pa.Table:
    """Every row's output names: add `output_exts` and `output_uris` (aligned lists, the
    planned one first) and `plan_error_type` / `plan_error_message`.

    Names are decided here, before any image runs, so no two rows can write the same
    file. Two rows that name the same file (two equal `output_uri`s, or an `output_uri`
    equal to another row's default name) are a collision: the later row fails with
    output_collision. Two sources whose default names meet (`a.gif` and `a.png` both
    become `a.png`) are not: the one whose name it is keeps it and the other keeps its
    source's extension (`a.gif.png`); so do the fallback names (PNG for alpha in JPEG,
    TIFF for a streamed image). Outputs lie under OUT/images, never on the run's own
    files; a path that leaves it (`..`, a foreign output_uri, a link in OUT) fails that
    row with path_escape.

    Names are made column by column (a million rows in seconds); the rows that could
    contend for a name, and those with an output_uri or an unusual path, go through the
    rules above one row at a time (`_RowNames`), which decides for them exactly as if
    every row had gone through it. `one_by_one` sends every row there (the reference the
    tests hold the column-wise names to).
    """
    n = table.num_rows
    relatives = _string_column(table, "relative_path")
    overrides = _string_column(table, "output_uri")
    has_override = pc.fill_null(pc.not_equal(overrides, ""), False)
    source_exts = pc.fill_null(pc.struct_field(
        pc.extract_regex(relatives, r"(?P<ext>\.[^./]*)$"), [0]), "")
    stem_uris = pc.binary_join_element_wise(
        layout.images, pc.replace_substring_regex(relatives, r"\.[^./]*$", "", max_replacements=1), "/")
    ranks = _extension_ranks(source_exts, requested)
    planned = [pc.binary_join_element_wise(stem_uris, ext, ".") for ext in ranks]

    column_wise = np.zeros(n, bool) if one_by_one else _column_wise_rows(relatives, has_override, layout)
    exact = _RowNames(layout, requested, relatives, overrides, has_override)
    exact.add(np.flatnonzero(~column_wise))
    exact.add(_contended_rows(planned, column_wise, exact.candidates()))
    while True:  # a contended row may fall back to its `a.gif.png` name: who else has that?
        alternatives = exact.new_alternatives()
        if not alternatives:
            break
        taken = pa.array(alternatives, pa.string())
        exact.add(np.unique(np.concatenate([
            np.flatnonzero(column_wise & pc.fill_null(pc.is_in(names, value_set=taken), False)
                           .to_numpy(zero_copy_only=False)) for names in planned])))
    names, errors = exact.decide()
    return _with_names(table, ranks, planned, names, errors)


def planned_outputs_column(listed: pa.Table) -> pa.Array:
    """Each row's planned names as the manifest's `planned_outputs` (JSON {ext: uri})."""
    import json

    return pa.array([None if uris is None else json.dumps(dict(zip(exts, uris)))
                     for exts, uris in zip(listed.column("output_exts").to_pylist(),
                                           listed.column("output_uris").to_pylist())], pa.string())


def keep_planned_outputs(listed: pa.Table, layout: OutLayout) -> pa.Table:
    """A manifest that carries the names a full plan gave its rows (nightly, --plan-manifest):
    those names stand, checked again to lie under OUT/images, instead of names made from these
    rows alone, which could hand a skipped row's output name (`a.png`) to another (`a.gif`)."""
    import json

    planned = listed.column("planned_outputs").to_pylist()
    if any(p is None for p in planned):
        raise ManifestError("a manifest with planned_outputs needs them on every row")
    exts, uris = [], []
    types = listed.column("plan_error_type").to_pylist()
    messages = listed.column("plan_error_message").to_pylist()
    for i, text in enumerate(planned):
        try:
            names = json.loads(text)
            if not isinstance(names, dict) or not names or any(e not in EXTENSION_FORMAT for e in names):
                raise ValueError("not an {extension: URI} map")
            for uri in names.values():
                layout.check_output(uri)
        except ImageError as exc:
            exts.append(None), uris.append(None)
            types[i], messages[i] = exc.error_type, str(exc)
            continue
        except ValueError as exc:
            raise ManifestError(f"planned_outputs of row {i} is not valid: {exc}") from None
        exts.append(list(names)), uris.append(list(names.values()))
        types[i] = messages[i] = None
    columns = {"output_exts": pa.array(exts, pa.list_(pa.string())),
               "output_uris": pa.array(uris, pa.list_(pa.string())),
               "plan_error_type": pa.array(types, pa.string()),
               "plan_error_message": pa.array(messages, pa.string())}
    for name, column in columns.items():
        listed = listed.set_column(listed.schema.get_field_index(name), name, column)
    return listed


def _string_column(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    return column if pa.types.is_string(column.type) else column.cast(pa.string())


def _extension_ranks(source_exts: pa.Array, requested: str) -> list[pa.Array]:
    """The output extensions of every row, one array per rank (planned, then fallbacks;
    null beyond a row's last): output_extensions of each distinct source extension."""
    lower = pc.utf8_lower(source_exts)
    distinct = pc.unique(lower)
    choices = [output_extensions(requested, "x" + ext) for ext in distinct.to_pylist()]
    where = pc.index_in(lower, value_set=distinct)
    return [pa.array([c[rank] if rank < len(c) else None for c in choices], pa.string()).take(where)
            for rank in range(max(map(len, choices), default=1))]


def _column_wise_rows(relatives: pa.Array, has_override: pa.Array, layout: OutLayout) -> np.ndarray:
    """Rows whose default names hold as made column-wise: no output_uri, a usual path, and
    (local OUT) a folder that no link leads out of OUT/images."""
    usual = pc.and_(pc.invert(has_override),
                    pc.invert(pc.match_substring_regex(relatives, _UNUSUAL_RELATIVE)))
    rows = pc.fill_null(usual, False).to_numpy(zero_copy_only=False)
    fs, images = storage.get_fs(layout.images)
    if storage.is_local(fs) and rows.any():
        folders = pc.replace_substring_regex(relatives, r"/?[^/]*$", "", max_replacements=1)
        distinct = pc.unique(folders.filter(pa.array(rows)))
        leaving = [folder for folder in distinct.to_pylist()
                   if layout.real_outside(f"{images}/{folder}" if folder else images) is not None]
        if leaving:
            rows &= ~pc.fill_null(pc.is_in(folders, value_set=pa.array(leaving, pa.string())),
                                  False).to_numpy(zero_copy_only=False)
    return rows


def _contended_rows(planned: list[pa.Array], column_wise: np.ndarray,
                    others: tuple[list[int], list[str]]) -> np.ndarray:
    """Rows with a name that another row also has: column-wise rows' planned names, and the
    names (default, fallback and `a.gif.png`, or output_uri) of the rows named one by one."""
    keep = pa.array(column_wise)
    rows = [np.flatnonzero(column_wise & pc.is_valid(names).to_numpy(zero_copy_only=False))
            for names in planned]
    names = [pc.drop_null(names.filter(keep)) for names in planned]
    everything = pa.concat_arrays([*names, pa.array(others[1], pa.string())])
    counts = pc.value_counts(everything)
    shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(shared) == 0:
        return np.zeros(0, np.int64)
    owners = np.concatenate([*rows, np.asarray(others[0], np.int64)])
    return np.unique(owners[pc.is_in(everything, value_set=shared).to_numpy(zero_copy_only=False)])


class _RowNames:
    """The naming rules one row at a time, for the rows that need them (see plan_outputs)."""

    def __init__(self, layout: OutLayout, requested: str, relatives: pa.Array, overrides: pa.Array,
                 has_override: pa.Array) -> None:
        self.layout, self.requested = layout, requested
        self.columns = (relatives, overrides, has_override)
        self.rows: dict[int, dict] = {}  # row -> relative, override, stem, exts, error
        self.unseen: list[int] = []      # rows added whose fallback names are not yet asked about

    def add(self, rows: np.ndarray) -> None:
        new = np.setdiff1d(np.asarray(rows, np.int64), np.fromiter(self.rows, np.int64, len(self.rows)))
        if len(new) == 0:
            return
        relatives, overrides, has_override = self.columns
        picks = pa.array(new)
        columns = zip(relatives.take(picks).to_pylist(), overrides.take(picks).to_pylist(),
                      has_override.take(picks).to_pylist())
        for i, (relative, override, is_override) in zip(new.tolist(), columns):
            row = self.rows[i] = {"relative": relative, "override": override if is_override else None,
                                  "stem": None, "exts": (), "error": None}
            try:
                if is_override:
                    row["override"] = _check_override(self.layout, override)
                else:
                    row["stem"] = self.layout.image_path(posixpath.splitext(relative)[0])
                    row["exts"] = output_extensions(self.requested, relative)
            except ImageError as exc:
                row["error"] = (exc.error_type, str(exc))
        self.unseen.extend(new.tolist())

    def _names(self, row: dict, fallbacks: bool) -> list[str]:
        if row["error"]:
            return []
        if row["override"]:
            return [row["override"][0]]
        names = [f"{row['stem']}.{ext}" for ext in row["exts"]]
        source_ext = posixpath.splitext(row["relative"])[1]
        if fallbacks and source_ext:
            names += [f"{row['stem']}{source_ext}.{ext}" for ext in row["exts"]]
        return names

    def candidates(self) -> tuple[list[int], list[str]]:
        """Every name these rows may take, with its row."""
        rows, names = [], []
        for i, row in self.rows.items():
            for name in dict.fromkeys(self._names(row, fallbacks=True)):
                rows.append(i)
                names.append(name)
        self.unseen.clear()
        return rows, names

    def new_alternatives(self) -> list[str]:
        """The `a.gif.png` names of the rows added since last asked."""
        names = [name for i in self.unseen
                 for name in self._names(self.rows[i], fallbacks=True)[len(self.rows[i]["exts"]):]]
        self.unseen.clear()
        return names

    def decide(self) -> tuple[dict[int, dict[str, str]], dict[int, tuple[str, str]]]:
        """(row -> {ext: uri}, the planned one first; row -> (error_type, message))."""
        order = sorted(self.rows)
        rows = self.rows
        names: dict[int, dict[str, str]] = {i: {} for i in order}
        errors = {i: rows[i]["error"] for i in order if rows[i]["error"]}
        owner: dict[str, int] = {}

        def collide(i: int, uri: str) -> None:
            errors[i] = ("output_collision", f"two manifest rows write the same output ({storage.display(uri)})")
            for name in names[i].values():
                owner.pop(name, None)
            names[i] = {}

        # 1. output_uri overrides, as given; the later of two equal ones fails.
        for i in order:
            if rows[i]["override"] is None or i in errors:
                continue
            uri, ext = rows[i]["override"]
            if uri in owner:
                collide(i, uri)
                continue
            owner[uri] = i
            names[i] = {ext: uri}

        # 2. default names, planned extension before fallbacks, and at each step the rows whose
        #    name it is (a.png for `a.png`) before the rows that map onto it (`a.gif`).
        defaults = [i for i in order if rows[i]["override"] is None and i not in errors]
        own_name_first = sorted(defaults, key=lambda i: not rows[i]["relative"].lower().endswith(
            "." + rows[i]["exts"][0]))
        for rank in range(max((len(rows[i]["exts"]) for i in defaults), default=0)):
            for i in own_name_first:
                if i in errors or rank >= len(rows[i]["exts"]):
                    continue
                ext = rows[i]["exts"][rank]
                plain = f"{rows[i]['stem']}.{ext}"
                holder = owner.get(plain)
                if rank == 0 and holder is not None and rows[holder]["override"] is not None:
                    # An output_uri names this row's own output: the later row of the two fails.
                    if holder < i:
                        collide(i, plain)
                        continue
                    collide(holder, plain)
                    holder = None
                if holder is None:
                    uri = plain
                else:
                    source_ext = posixpath.splitext(rows[i]["relative"])[1]
                    uri = f"{rows[i]['stem']}{source_ext}.{ext}"
                    if not source_ext or uri in owner:
                        collide(i, uri)
                        continue
                owner[uri] = i
                names[i][ext] = uri
        return names, errors


def _check_override(layout: OutLayout, override: str) -> tuple[str, str]:
    """(uri, extension) of an output_uri, checked: under OUT/images, with an image extension.
    A relative path is relative to OUT (`images/a/b.png`), not to where the command runs."""
    if "://" not in override and not posixpath.isabs(override):
        override = storage.join(layout.root, override)
    uri = layout.check_output(override)
    ext = posixpath.splitext(uri)[1].lower().lstrip(".")
    if ext not in EXTENSION_FORMAT:
        raise PathEscapeError(f"output_uri {storage.display(uri)} must end in "
                              f".png, .jpg, .jpeg, .webp, .tif or .tiff")
    return uri, ext


def _with_names(table: pa.Table, ranks: list[pa.Array], planned: list[pa.Array],
                names: dict[int, dict[str, str]], errors: dict[int, tuple[str, str]]) -> pa.Table:
    """`table` with the four planned columns: column-wise names, those of `names` put in."""
    n = table.num_rows
    exact = np.zeros(n, bool)
    exact[list(names)] = True
    order = sorted(names)
    counts = np.zeros(n, np.int64)
    for rank, ext in enumerate(ranks):
        counts += pc.is_valid(ext).to_numpy(zero_copy_only=False)
    counts[order] = [len(names[i]) for i in order]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    mask = pa.array(exact)
    exts, uris, positions = [], [], []
    for rank in range(max([len(ranks), *(len(v) for v in names.values())])):
        ext = ranks[rank] if rank < len(ranks) else pa.nulls(n, pa.string())
        uri = planned[rank] if rank < len(planned) else pa.nulls(n, pa.string())
        if order:
            chosen = [list(names[i].items())[rank] if rank < len(names[i]) else (None, None)
                      for i in order]
            ext = pc.replace_with_mask(ext, mask, pa.array([c[0] for c in chosen], pa.string()))
            uri = pc.replace_with_mask(uri, mask, pa.array([c[1] for c in chosen], pa.string()))
        rows = np.flatnonzero(counts > rank)
        picks = pa.array(rows)
        exts.append(ext.take(picks))
        uris.append(uri.take(picks))
        positions.append(offsets[rows] + rank)
    position = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    flat_order = np.empty_like(position)
    flat_order[position] = np.arange(len(position))
    failed = np.zeros(n, bool)
    failed[list(errors)] = True
    list_offsets = pa.array(offsets.astype(np.int32))

    def lists(parts: list[pa.Array]) -> pa.Array:
        flat = pa.concat_arrays(parts).take(pa.array(flat_order)) if parts else pa.array([], pa.string())
        return pa.ListArray.from_arrays(list_offsets, flat, mask=pa.array(failed))

    error_types = [None] * n
    error_messages = [None] * n
    for i, (error_type, message) in errors.items():
        error_types[i], error_messages[i] = error_type, message
    return (table.append_column("output_exts", lists(exts))
                 .append_column("output_uris", lists(uris))
                 .append_column("plan_error_type", pa.array(error_types, pa.string()))
                 .append_column("plan_error_message", pa.array(error_messages, pa.string())))
