"""The identity of a dataset's content: what a cached result computed on it must match."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import datasets

from ._common import check_canonical, quiet_datasets

ImageIdentity = Literal["content", "stat"]

_CHUNK = 1 << 20


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _image_identity(ref: dict | None, images: ImageIdentity) -> str:
    """One image's identity: the SHA-256 of its bytes, or (``"stat"``, a file's) path, size and
    modification time in nanoseconds."""
    if ref is None:
        return "none"
    data, path = ref.get("bytes"), ref.get("path")
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    if path is None:
        return "none"
    if images == "stat":
        st = os.stat(path)
        return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    return _file_sha256(path)


@quiet_datasets()
def dataset_fingerprint(
    dd: datasets.DatasetDict, *, images: ImageIdentity = "content", workers: int = 4
) -> str:
    """A SHA-256 hex digest (64 characters) of a canonical ``DatasetDict``'s content.

    It covers, for ``train`` then ``test``: the class and group names, every non-image column
    (ids, labels, groups, raw attributes, in row order), and each image. So a flipped label, a
    removed or added row, a changed split, or an image whose bytes changed gives another
    fingerprint; the source string, the column names a user passed and the cache location do not
    enter. A Hub source is covered through its content: another revision changes rows or bytes.

    Args:
        dd: the canonical form (``check_canonical`` holds).
        images: ``"content"`` (default): the SHA-256 of every image's bytes (reads every file
            once, about as long as ``load_dataset``'s image check). ``"stat"``: the cheap proxy,
            for a file-backed image its resolved path, size and modification time (an image
            rewritten in place with the same size within the file system's time resolution goes
            unnoticed); embedded image bytes are hashed either way.
        workers: threads reading image files.

    Raises:
        ValueError: ``images`` not one of ``"content"``, ``"stat"``.
        DataError: ``dd`` is not canonical.
    """
    if images not in ("content", "stat"):
        raise ValueError(f"images must be 'content' or 'stat'; got {images!r}")
    check_canonical(dd)
    h = hashlib.sha256(b"fq_data.dataset_fingerprint/1\n")
    for split in ("train", "test"):
        ds = dd[split]
        feats = ds.features
        columns = [c for c in ds.column_names if c != "image"]
        header = {
            "split": split,
            "rows": len(ds),
            "classes": list(feats["label"].names),
            "groups": list(feats["group"].names),
            "columns": columns,
        }
        h.update(json.dumps(header, sort_keys=True).encode())
        # through the arrow formatter, so a selected/filtered dataset's indices mapping holds
        table = ds.select_columns(columns).with_format("arrow")[:]
        for name in columns:
            values = table.column(name).to_pylist()
            h.update(json.dumps([name, values], default=str).encode())
        raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in raw.iter(batch_size=256):
                for ident in pool.map(lambda r: _image_identity(r, images), batch["image"]):
                    h.update(ident.encode() + b"\n")
    return h.hexdigest()
