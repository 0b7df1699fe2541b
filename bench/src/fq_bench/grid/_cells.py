"""Cell keys, the grid's cell list, sharding, and the atomic, checksummed cell store (with
failure records and claim files)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fq_data import atomic_write_bytes

from ._config import GridConfig
from ._names import METHOD_IDS, SWEEP_METHODS, parse_swept_value, same_swept_value

logger = logging.getLogger("fq_bench.grid")

CELL_FORMAT = "fq_bench.grid.cell/1"
FAILURE_FORMAT = "fq_bench.grid.failure/1"
CLAIM_FORMAT = "fq_bench.grid.claim/1"
#: A claim older than this (seconds) is taken over even when its owner cannot be checked (another
#: host): longer than any single cell takes.
STALE_CLAIM_SECONDS = 24 * 3600.0


@dataclass(frozen=True, kw_only=True, order=True)
class CellKey:
    """One cell of the grid: a method on one (dataset, model) with one training seed.

    ``variant`` is ``""`` for Table 1 and ``"<field>=<value>"`` for an ablation point (an FQ-BAQ
    hyper-parameter override). ``budget`` is ``""`` for Table 1 and, for a frontier cell, the
    budget in parameter-weighted average bits per weight as :func:`format_value` writes it.
    """

    dataset: str
    model: str
    method: str
    seed: int
    variant: str = ""
    budget: str = ""

    @property
    def id(self) -> str:
        """File-name-safe, unique string: ``dataset__model__method__s<seed>[__b<budget>][__variant]``."""
        parts = [self.dataset, self.model, self.method, f"s{self.seed}"]
        if self.budget:
            parts.append(f"b{self.budget}")
        if self.variant:
            parts.append(self.variant)
        return "__".join(parts)

    @property
    def budget_bits(self) -> float | None:
        """The frontier budget (average bits per weight), or ``None`` for a Table 1 cell."""
        return float(self.budget) if self.budget else None

    @property
    def override(self) -> tuple[str, float | str] | None:
        """The ``(field, value)`` of an ablation variant, else ``None`` (a name for the fields of
        :data:`~fq_bench.grid._config.NAME_SWEEPS`, a float otherwise)."""
        if not self.variant:
            return None
        name, value = self.variant.split("=", 1)
        return name, parse_swept_value(name, value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "method": self.method,
            "seed": self.seed,
            "variant": self.variant,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellKey:
        return cls(
            dataset=str(d["dataset"]),
            model=str(d["model"]),
            method=str(d["method"]),
            seed=int(d["seed"]),
            variant=str(d.get("variant", "")),
            budget=str(d.get("budget", "")),
        )


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts`` (sha256 of their repr): the same in every process and run."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def format_value(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` (``3.0`` -> ``"3"``, ``2.25`` ->
    ``"2.25"``, ``1.2345678`` -> ``"1.2345678"``): never rounded, so two values never share a name."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def variant_name(field_name: str, value: float | str) -> str:
    """``"<field>=<value>"`` with a number written exactly (:func:`format_value`), a name as is."""
    return f"{field_name}={value if isinstance(value, str) else format_value(value)}"


def canonical_key(key: CellKey, config: GridConfig) -> CellKey:
    """The cell ``key`` computes: itself, or the plain cell (no variant) when its override sets
    the value ``config`` (the run's config, before overrides) already has.

    An ablation sweep's reference point is the same configuration in every sweep and in Table 1;
    keyed by this, it gets one cell seed, so it is computed once and reads the same everywhere.
    """
    ov = key.override
    if ov is not None and same_swept_value(ov[1], getattr(config, ov[0])):
        return dataclasses.replace(key, variant="")
    return key


def grid_cells(config: GridConfig) -> list[CellKey]:
    """Every cell of ``config`` in a fixed order (dataset, model, seed, method order of Table 1).

    Without sweeps: datasets x models x methods x seeds. With sweeps: for each swept field and
    value, each method (normally only ``fq-baq``) with that override. Then, per (dataset, model,
    seed), the frontier: each of ``frontier_methods`` at each of ``budgets``, and with sweeps,
    after the plain cells of a budget, each frontier method the swept field changes
    (:data:`~fq_bench.grid._config.SWEEP_METHODS`) once per swept value at that budget.
    """
    order = {m: i for i, m in enumerate(METHOD_IDS)}
    methods = sorted(config.methods, key=order.__getitem__)
    frontier = sorted(config.frontier_methods, key=order.__getitem__)
    variants = (
        [""]
        if not config.sweeps
        else [variant_name(name, v) for name, values in config.sweeps for v in values]
    )
    swept = [(variant_name(name, v), name) for name, values in config.sweeps for v in values]
    cells = []
    for d in config.datasets:
        for m in config.models:
            for s in config.seeds:
                cells += [
                    CellKey(dataset=d, model=m, method=meth, seed=s, variant=var)
                    for var in variants
                    for meth in methods
                ]
                for b in sorted(config.budgets):
                    budget = format_value(b)
                    cells += [
                        CellKey(dataset=d, model=m, method=meth, seed=s, budget=budget)
                        for meth in frontier
                    ]
                    cells += [
                        CellKey(dataset=d, model=m, method=meth, seed=s, budget=budget, variant=v)
                        for v, name in swept
                        for meth in frontier
                        if meth in SWEEP_METHODS[name]
                    ]
    return cells


def shard_cells(cells: list[CellKey], index: int, count: int) -> list[CellKey]:
    """Shard ``index`` (0-based) of ``count``: round robin over the cells sorted by id.

    Deterministic and independent of the order the caller lists cells in; the shards partition
    the grid (every cell in exactly one shard), and each keeps the caller's order.
    """
    if not (
        isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count
    ):
        raise ValueError(f"shard must be i/n with 0 <= i < n; got {index}/{count}")
    ids = sorted(c.id for c in cells)
    mine = {cid for k, cid in enumerate(ids) if k % count == index}
    return [c for c in cells if c.id in mine]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4); got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard i/n needs 0 <= i < n; got {text!r}")
    return i, n


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


class CellStore:
    """Finished cells as one JSON file each under ``<root>/cells/``.

    A file holds ``{"format", "key", "fingerprint", "result", "sha256"}`` where ``sha256`` is the
    hash of the canonical JSON of the other fields: a truncated, edited or foreign file fails the
    check and reads as missing, so the cell is recomputed.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.dir = self.root / "cells"

    def path(self, key: CellKey) -> Path:
        return self.dir / f"{key.id}.json"

    def write(self, key: CellKey, result: dict[str, Any], *, fingerprint: str) -> Path:
        body = {
            "format": CELL_FORMAT,
            "key": key.to_dict(),
            "fingerprint": fingerprint,
            "result": result,
        }
        body["sha256"] = hashlib.sha256(_canonical(body)).hexdigest()
        path = self.path(key)
        atomic_write_bytes(path, json.dumps(body, indent=1, sort_keys=True).encode())
        return path

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            body = json.loads(path.read_bytes())
            digest = body.pop("sha256")
            ok = (
                body.get("format") == CELL_FORMAT
                and digest == hashlib.sha256(_canonical(body)).hexdigest()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            logger.warning(
                "cell file %s is corrupt, partial or edited; it is ignored (a run recomputes it)",
                path,
            )
            return None
        return body

    def read(self, key: CellKey, *, fingerprint: str | None = None) -> dict[str, Any] | None:
        """The cell's result, or ``None`` when missing, corrupt, or from another fingerprint."""
        path = self.path(key)
        if not path.is_file():
            return None
        body = self._load(path)
        if body is None or CellKey.from_dict(body["key"]) != key:
            return None
        if fingerprint is not None and body["fingerprint"] != fingerprint:
            logger.warning("cell %s was computed under another config or data; recomputing", key.id)
            return None
        return body["result"]

    def all(self) -> list[tuple[CellKey, dict[str, Any]]]:
        """Every valid cell file in the store, sorted by id, whatever its fingerprint."""
        return [(key, result) for key, _fp, result in self.entries()]

    def entries(self) -> list[tuple[CellKey, str, dict[str, Any]]]:
        """``(key, fingerprint, result)`` of every valid cell file, sorted by id."""
        out = []
        for path in sorted(self.dir.glob("*.json")):
            body = self._load(path)
            if body is not None:
                out.append(
                    (CellKey.from_dict(body["key"]), str(body["fingerprint"]), body["result"])
                )
        return out

    # -- failures ---------------------------------------------------------------------------------
    def failure_path(self, key: CellKey) -> Path:
        return self.root / "failed" / f"{key.id}.json"

    def write_failure(self, key: CellKey, error: BaseException, *, fingerprint: str) -> Path:
        """Record that ``key`` failed with ``error`` (type, message, traceback) under
        ``<root>/failed/``; the next run tries the cell again."""
        body = {
            "format": FAILURE_FORMAT,
            "key": key.to_dict(),
            "fingerprint": fingerprint,
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error))[-8000:],
            "time": time.time(),
        }
        path = self.failure_path(key)
        atomic_write_bytes(path, json.dumps(body, indent=1, sort_keys=True).encode())
        return path

    def clear_failure(self, key: CellKey) -> None:
        self.failure_path(key).unlink(missing_ok=True)

    def failures(self) -> list[tuple[CellKey, str]]:
        """``(key, "ErrorType: message")`` of every recorded failure, sorted by id."""
        out = []
        for path in sorted((self.root / "failed").glob("*.json")):
            try:
                body = json.loads(path.read_bytes())
                out.append((CellKey.from_dict(body["key"]), str(body["error"])))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                logger.warning("failure record %s is unreadable; ignored", path)
        return out

    # -- claims -----------------------------------------------------------------------------------
    def claim_path(self, key: CellKey) -> Path:
        return self.root / "claims" / f"{key.id}.claim"

    def claim(self, key: CellKey) -> bool:
        """Take the claim on computing ``key``: ``True`` when this process now holds it.

        The claim is a file created exclusively (``O_EXCL``) holding its owner (host, pid) and the
        time. A claim held by another live process is respected (``False``); a stale one (its
        owner's process is gone on this host, or it is older than :data:`STALE_CLAIM_SECONDS`) is
        taken over.
        """
        path = self.claim_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        host, pid = _me()
        body = json.dumps(
            {"format": CLAIM_FORMAT, "host": host, "pid": pid, "time": time.time()}
        ).encode()
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._claim_holder(path)
                if holder is not None and not _claim_stale(holder):
                    return holder[:2] == _me()
                logger.warning("taking over the stale claim %s (%s)", path, holder)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        return False

    def release(self, key: CellKey) -> None:
        """Drop this process's claim on ``key`` (a no-op when it holds none)."""
        path = self.claim_path(key)
        holder = self._claim_holder(path)
        if holder is not None and holder[:2] == _me():
            path.unlink(missing_ok=True)

    def claimed_by_other(self, key: CellKey) -> bool:
        """Whether another live process holds the claim on ``key``."""
        holder = self._claim_holder(self.claim_path(key))
        return holder is not None and holder[:2] != _me() and not _claim_stale(holder)

    @staticmethod
    def _claim_holder(path: Path) -> tuple[str, int, float] | None:
        """``(host, pid, time)`` of the claim at ``path``, ``None`` when there is none."""
        try:
            body = json.loads(path.read_bytes())
            return str(body["host"]), int(body["pid"]), float(body["time"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # being written this instant, or garbage: fresh for a minute after its mtime
            try:
                return "?", -1, path.stat().st_mtime
            except OSError:
                return None


def _me() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _claim_stale(holder: tuple[str, int, float]) -> bool:
    host, pid, when = holder
    if time.time() - when > STALE_CLAIM_SECONDS:
        return True
    if host == "?":
        return time.time() - when > 60.0
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_cell_fingerprints(root: str | os.PathLike[str]) -> dict[str, str] | None:
    """``cell_fingerprints`` of ``root/config.json`` (model, or ``"<dataset>/<model>"`` for data
    read from a source, -> the cell fingerprint the run recorded), or ``None`` when there is no
    readable one (a folder from before)."""
    try:
        fps = json.loads((Path(root) / "config.json").read_text())["cell_fingerprints"]
        return {str(m): str(f) for m, f in fps.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def select_config(
    entries: list[tuple[CellKey, str, dict[str, Any]]], fingerprints: dict[str, str] | None
) -> tuple[list[tuple[CellKey, dict[str, Any]]], list[CellKey]]:
    """The cells of one config (and one version of the data) per (dataset, model), and the keys
    of the others (kept on disk, not used).

    ``fingerprints``: ``"<dataset>/<model>"`` or, for every dataset without its own entry, the
    model -> the cell fingerprint whose cells a table holds (the run's ``config.json``). Without
    it, each (dataset, model) keeps the fingerprint most of its cells carry (ties: the lexically
    smallest), so two configs are never averaged into one row.
    """
    if fingerprints is None:
        counts: dict[str, dict[str, int]] = {}
        for key, fp, _ in entries:
            per = counts.setdefault(f"{key.dataset}/{key.model}", {})
            per[fp] = per.get(fp, 0) + 1
        fingerprints = {m: min(per, key=lambda f: (-per[f], f)) for m, per in counts.items()}
    kept, ignored = [], []
    for key, fp, result in entries:
        wanted = fingerprints.get(f"{key.dataset}/{key.model}", fingerprints.get(key.model))
        if wanted == fp:
            kept.append((key, result))
        else:
            ignored.append(key)
    return kept, ignored
