"""``prepare fitzpatrick17k``: fetch the images listed in the CSV, then write parquet shards.

Standard library HTTP only (``urllib``), a thread pool, retries with exponential backoff,
atomic writes (temp file + ``os.replace``), and a resumable layout: an image already present
and decodable is never fetched again. The output folder is something ``load_fitzpatrick17k``
(and ``datasets.load_dataset``) reads directly::

    OUT/README.md                       dataset card; its ``configs`` point at the shards
    OUT/images/<md5hash>.jpg            the downloaded images
    OUT/data/train-00000-of-0000K.parquet
    OUT/failures.csv                    md5hash, url, reason for every row without an image
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import datasets
import polars as pl
from tqdm.auto import tqdm

from ._assemble import open_image
from ._common import (
    METADATA_DIR,
    DataError,
    atomic_write_csv,
    quiet_datasets,
    require_columns,
)
from ._io import atomic_write_bytes

logger = logging.getLogger("fq_data")

USER_AGENT = "fq-bench-prepare/0.1 (+research; Fitzpatrick17k images)"
_PERMANENT_HTTP = {400, 401, 403, 404, 410, 451}
_INT_COLS = ("fitzpatrick_scale", "fitzpatrick_centaur")
# URLError covers refused connections; HTTPException covers short reads (IncompleteRead)
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


@dataclass(frozen=True, kw_only=True)
class PrepareResult:
    """What a ``prepare_fitzpatrick17k`` run did (counts of CSV rows considered)."""

    out_dir: Path
    rows: int
    downloaded: int
    already_present: int
    failed: int
    shards: tuple[Path, ...]
    manifest: Path


def _valid_image_bytes(data: bytes) -> str | None:
    try:
        open_image({"bytes": data, "path": None})
    except Exception as exc:  # any decoder error means the payload is not a usable image
        return f"corrupt: {type(exc).__name__}: {exc}"[:200]
    return None


def _valid_file(path: Path) -> bool:
    try:
        open_image(str(path), draft_size=64)
    except Exception:  # missing, truncated or not an image: fetch it again
        return False
    return True


def _rebase(url: str, base_url: str | None) -> str:
    if base_url is None:
        return url
    parts, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(base_url)
    path = base.path.rstrip("/") + parts.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, parts.query, ""))


def fetch_image(
    url: str, dest: Path, *, timeout: float, retries: int, backoff: float
) -> str | None:
    """Download ``url`` to ``dest`` if the payload decodes; None on success, else the reason.

    Permanent HTTP errors (404, 403, ...) are not retried; timeouts, connection errors, 5xx,
    short reads and undecodable payloads are, up to ``retries`` times, sleeping
    ``backoff * 2**attempt`` seconds between attempts.
    """
    reason = "not attempted"
    for attempt in range(retries + 1):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = resp.read()
            bad = _valid_image_bytes(data)
            if bad is None:
                atomic_write_bytes(dest, data)
                return None
            reason = bad
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if exc.code in _PERMANENT_HTTP:
                return reason
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            TimeoutError,
            ConnectionError,
        ) as exc:
            reason = f"{type(exc).__name__}: {exc}"[:200]
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    return reason


def _dataset_card(n: int, shards: int) -> str:
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
license: cc-by-nc-sa-3.0
---
# Fitzpatrick17k (prepared by `python -m fq_data prepare fitzpatrick17k`)

{n} images in {shards} parquet shard(s), downloaded from the URLs in the Fitzpatrick17k
annotations (Groh et al., CVPR 2021; annotations CC BY-NC-SA 3.0; each image keeps the licence
of its source atlas). Rows whose image could not be fetched or decoded are listed in
`failures.csv`. Load with `fq_data.load_fitzpatrick17k(<this folder>)`.
"""


def _write_shards(out: Path, rows: pl.DataFrame, rows_per_shard: int) -> tuple[Path, ...]:
    """Write all shards into a temp folder, then swap it in for ``out/data``."""
    feats = {c: datasets.Value("string") for c in rows.columns}
    feats.update({c: datasets.Value("int64") for c in _INT_COLS if c in rows.columns})
    features = datasets.Features({"image": datasets.Image(), **feats})
    k = max(1, -(-rows.height // rows_per_shard))
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".data."))
    try:
        for s in range(k):
            part = rows[s * rows_per_shard : (s + 1) * rows_per_shard]
            part = part.with_columns(
                [pl.col(c).cast(pl.Int64, strict=False) for c in _INT_COLS if c in part.columns]
            )
            cols = part.to_dict(as_series=False)
            cols["image"] = [
                {"bytes": (out / "images" / f"{h}.jpg").read_bytes(), "path": f"{h}.jpg"}
                for h in cols["md5hash"]
            ]
            ds = datasets.Dataset.from_dict(cols, features=features)
            ds.to_parquet(str(tmp / f"train-{s:05d}-of-{k:05d}.parquet"))
        final, old = out / "data", out / f".data.old.{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tuple(sorted(final.glob("train-*.parquet")))


@quiet_datasets()
def prepare_fitzpatrick17k(
    csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 20.0,
    strict: bool = False,
    base_url: str | None = None,
    limit: int | None = None,
    rows_per_shard: int = 2000,
    progress: bool = False,
) -> PrepareResult:
    """Download the Fitzpatrick17k images listed in ``csv`` (default: the embedded real CSV).

    Parallel (``workers`` threads), resumable (a present, decodable ``images/<md5hash>.jpg`` is
    never fetched again), ``retries`` with exponential ``backoff`` (seconds), ``timeout`` per
    request (seconds). Every image must decode (PIL) or it counts as a failure. Writes
    ``failures.csv`` always, then parquet shards of the rows that have an image. ``strict``:
    any failure raises :class:`DataError` and no shard is (re)written. ``base_url`` replaces the
    scheme and host of every URL (mirrors, tests). ``limit``: only the first ``limit`` rows.
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("retries", retries, 0),
        ("rows_per_shard", rows_per_shard, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
    csv_path = Path(csv) if csv is not None else METADATA_DIR / "fitzpatrick17k.csv"
    table = pl.read_csv(csv_path, infer_schema_length=0)
    require_columns(table.columns, ("md5hash", "url"), what=os.fspath(csv_path))
    if limit is not None:
        table = table.head(limit)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.glob(".*.part"):  # temp files of a run that was killed mid-write
        stale.unlink(missing_ok=True)

    hashes, urls = table["md5hash"].to_list(), table["url"].to_list()
    status: dict[str, str | None] = {}
    todo = []
    for h, u in zip(hashes, urls, strict=True):
        if _valid_file(images / f"{h}.jpg"):
            status[h] = "present"
        elif not u:
            status[h] = "no url"
        else:
            todo.append((h, _rebase(u, base_url)))
    present = sum(v == "present" for v in status.values())
    logger.info(
        "prepare fitzpatrick17k: %d rows, %d already present, %d to fetch",
        len(hashes),
        present,
        len(todo),
    )
    downloaded = 0
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {
            pool.submit(
                fetch_image,
                u,
                images / f"{h}.jpg",
                timeout=timeout,
                retries=retries,
                backoff=backoff,
            ): h
            for h, u in todo
        }
        for fut in tqdm(
            as_completed(futures),
            total=len(futures),
            disable=not progress,
            desc="fitzpatrick17k images",
        ):
            reason = fut.result()
            status[futures[fut]] = reason
            downloaded += reason is None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    failures = [
        (h, u, status[h])
        for h, u in zip(hashes, urls, strict=True)
        if status[h] not in (None, "present")
    ]
    manifest = out / "failures.csv"
    atomic_write_csv(manifest, ("md5hash", "url", "reason"), failures)
    if failures:
        logger.warning(
            "prepare fitzpatrick17k: %d image(s) failed; see %s", len(failures), manifest
        )
    if failures and strict:
        raise DataError(
            f"{len(failures)} image(s) could not be fetched or decoded (strict=True); "
            f"see {manifest}; first: {failures[:5]}"
        )
    ok = table.filter(pl.col("md5hash").is_in([h for h, _, _ in failures]).not_())
    if ok.height == 0:
        raise DataError(f"no image could be fetched; see {manifest}")
    shards = _write_shards(out, ok, rows_per_shard)
    atomic_write_bytes(out / "README.md", _dataset_card(ok.height, len(shards)).encode())
    return PrepareResult(
        out_dir=out,
        rows=len(hashes),
        downloaded=downloaded,
        already_present=present,
        failed=len(failures),
        shards=shards,
        manifest=manifest,
    )
