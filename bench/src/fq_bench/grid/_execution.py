"""The grid's execution: claim each cell, compute or reuse it, record failures, wait on others.

One :class:`GridRun` per :func:`~._runner.run_grid` call. A cell is claimed before it is computed
(``CellStore.claim``), so shards and duplicate launches into one folder share the work; a cell
another live run holds is waited for at the end. Each dataset is loaded, each FP32 reference
trained or loaded and each calibration computed at most once, on first use (:class:`_Lazy`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ._cell_run import cell_fingerprint, run_cell
from ._cells import CellKey, CellStore, canonical_key
from ._checkpoints import CalibrationCache, RunPaths, fp32_state
from ._config import GridConfig
from ._data import DataBundle, load_data
from ._processes import barrier, broadcast, is_main_process, main_process_first, run_device
from ._progress import cell_line, progress_mode, say

logger = logging.getLogger("fq_bench.grid")


@dataclass(kw_only=True)
class RunSummary:
    """What :func:`run_grid` did: cells in this shard, skipped (already done, or finished by a
    concurrent run while this one waited on its claim), computed, and failed (key, error)."""

    out: Path
    cells: list[CellKey]
    skipped: list[CellKey] = field(default_factory=list)
    computed: list[CellKey] = field(default_factory=list)
    failed: list[tuple[CellKey, str]] = field(default_factory=list)
    seconds: float = 0.0


#: Seconds between looks at cells another live run has claimed, once nothing else is left.
CLAIM_POLL_SECONDS = 5.0


def _finished_twin(
    store: CellStore, twins: Iterable[CellKey], fingerprints: dict[tuple[str, str], str]
) -> dict[str, Any] | None:
    """The stored result of a finished cell that computes the same thing, if one is readable."""
    for twin in twins:
        got = store.read(twin, fingerprint=fingerprints[twin.dataset, twin.model])
        if got is not None:
            return got
    return None


class _Lazy:
    """A value computed on first use; an exception is kept and raised again on every use (an
    FP32 training that failed fails each of its cells, without training again)."""

    def __init__(self, make: Any):
        self.make, self.value = make, None
        self.error: Exception | None = None
        self.done = False

    def __call__(self) -> Any:
        if self.error is not None:
            raise self.error
        if not self.done:
            try:
                self.value = self.make()
            except Exception as exc:
                self.error = exc
                raise
            self.done = True
        return self.value


class GridRun:
    """The cells of one run (this shard's share) in ``out``: which are finished, which to compute,
    and the :class:`RunSummary` of what :meth:`execute` did with them.

    A cell that raises is recorded under ``out/failed/`` and in ``RunSummary.failed`` and the
    other cells still run, unless ``fail_fast`` (or several processes, which must stay in step),
    where the error propagates. ``export_dir``: where quantized cells are also written as ONNX
    (``export_int8``: also with int8 activations, audited per group).
    """

    def __init__(
        self,
        config: GridConfig,
        out: Path,
        cells: list[CellKey],
        *,
        fail_fast: bool,
        export_dir: Path | None,
        export_int8: bool = False,
    ):
        self.config, self.out, self.fail_fast, self.export_dir = config, out, fail_fast, export_dir
        self.export_int8 = export_int8
        self.store, self.paths = CellStore(out), RunPaths(root=out)
        # data read from a source is loaded now: its content is part of what a finished cell,
        # checkpoint or calibration must match (a changed folder is recomputed, never mixed in)
        self.bundles: dict[str, DataBundle] = {}
        self.content: dict[str, str | None] = {
            d: None if config.data_source(d) == "semisynthetic" else self._data(d).content
            for d in dict.fromkeys(c.dataset for c in cells)
        }
        self.cell_fp = {
            (d, m): cell_fingerprint(config, m, fp)
            for d, fp in self.content.items()
            for m in config.models
        }
        done = [c for c in cells if self._stored(c) is not None] if is_main_process() else None
        done_ids = {c.id for c in broadcast(done)}
        self.canon = {c.id: canonical_key(c, config).id for c in cells}
        # finished cells by the cell they compute (main process only: it alone reads the store)
        self.done_by_canon: dict[str, list[CellKey]] = {}
        for c in done or []:
            self.done_by_canon.setdefault(self.canon[c.id], []).append(c)
        self.memo: dict[str, dict[str, Any]] = {}  # canonical id -> result computed in this run
        self.todo = [c for c in cells if c.id not in done_ids]
        skipped = [c for c in cells if c.id in done_ids]
        self.summary = RunSummary(out=out, cells=cells, skipped=skipped)
        self.device = run_device(config)
        self.mode = progress_mode(config)
        self.bar: Any = None

    def _stored(self, key: CellKey) -> dict[str, Any] | None:
        return self.store.read(key, fingerprint=self.cell_fp[key.dataset, key.model])

    def execute(self) -> RunSummary:
        """Compute every cell to do, then wait for those another live run had claimed."""
        self.bar = tqdm(
            total=len(self.todo), desc="grid cells", unit="cell", disable=self.mode != "bars"
        )
        if self.mode == "lines":
            say(
                f"{len(self.todo)} cell(s) to compute, {len(self.summary.skipped)} already "
                f"finished in {self.out}"
            )
        pending = self.todo
        while pending:
            waiting = self._run_pass(pending)
            pending = self._wait_for(waiting) if waiting else []
        self.bar.close()
        return self.summary

    def _run_pass(self, pending: list[CellKey]) -> list[CellKey]:
        """Attempt each pending cell, grouped by dataset and FP32 reference; the cells another
        live run holds come back."""
        waiting: list[CellKey] = []
        for dataset in dict.fromkeys(c.dataset for c in pending):
            data = _Lazy(lambda dataset=dataset: self._data(dataset))
            for model_name, seed in dict.fromkeys(
                (c.model, c.seed) for c in pending if c.dataset == dataset
            ):
                state = _Lazy(
                    lambda model_name=model_name, seed=seed, data=data: self._fp32(
                        data, model_name, seed
                    )
                )
                calib = _Lazy(
                    lambda model_name=model_name, seed=seed, state=state, data=data: (
                        CalibrationCache(
                            self.config, self.paths, data(), model_name, seed, state(), self.device
                        )
                    )
                )
                for key in [
                    c
                    for c in pending
                    if (c.dataset, c.model, c.seed) == (dataset, model_name, seed)
                ]:
                    self.bar.set_postfix_str(key.id)
                    how = self._attempt(key, calib, state, data)
                    if how == "claimed":
                        waiting.append(key)
                        continue
                    self._count(key, how)
        return waiting

    def _count(self, key: CellKey, how: str) -> None:
        if how == "finished by another run":
            self.summary.skipped.append(key)
        elif how != "failed":
            self.summary.computed.append(key)
        self.bar.update(1)
        if self.mode == "lines":
            n = len(self.summary.computed) + len(self.summary.failed)
            result = self.memo.get(self.canon[key.id], {})
            say(cell_line(n, len(self.todo), key, result, how))

    def _data(self, dataset: str) -> DataBundle:
        """``dataset`` loaded once per run (the main process first fills the on-disk data caches;
        the others then read them)."""
        if dataset not in self.bundles:
            with main_process_first():
                self.bundles[dataset] = load_data(self.config, dataset)
        return self.bundles[dataset]

    def _fp32(self, data: _Lazy, model_name: str, seed: int) -> Any:
        self.bar.set_postfix_str(f"FP32 {model_name} seed {seed}")
        t_fp32 = time.perf_counter()
        st = fp32_state(self.config, self.paths, data(), model_name, seed)
        if self.mode == "lines":
            say(
                f"FP32 {data().name} {model_name} seed {seed}: ready "
                f"({time.perf_counter() - t_fp32:.1f} s; trained or loaded)"
            )
        return st

    def _attempt(self, key: CellKey, calib: _Lazy, state: _Lazy, data: _Lazy) -> str:
        """Compute or reuse ``key``: ``"computed"``, ``"reused a finished twin"``,
        ``"finished by another run"``, ``"claimed"`` (another live run holds it) or ``"failed"``."""
        canon, store = self.canon[key.id], self.store
        result = self.memo.get(canon)
        if result is None and is_main_process():
            result = _finished_twin(store, self.done_by_canon.get(canon, ()), self.cell_fp)
        # every process takes the same branch (run_cell trains on all of them)
        if broadcast(result is not None):
            self.memo[canon] = result or {}
            if is_main_process():
                store.write(key, result or {}, fingerprint=self.cell_fp[key.dataset, key.model])
            barrier()
            return "reused a finished twin"
        got = store.claim(key) if is_main_process() else None
        if not broadcast(got):
            return "claimed"
        try:
            # a concurrent run may have finished it between our first look and the claim
            fresh = is_main_process() and self._stored(key)
            if broadcast(fresh is not None and fresh is not False):
                return "finished by another run"
            result = run_cell(
                key,
                self.config,
                data(),
                state(),
                calib(),
                self.device,
                progress=self.mode == "bars",
                export_dir=self.export_dir,
                export_int8=self.export_int8,
            )
            self.memo[canon] = result
            if is_main_process():
                store.write(key, result, fingerprint=self.cell_fp[key.dataset, key.model])
                store.clear_failure(key)
            barrier()
            return "computed"
        except Exception as exc:
            # the data not loading is the run's error, not a cell's: every cell would repeat it
            if self.fail_fast or exc is data.error:
                raise
            logger.error("cell %s failed: %s: %s", key.id, type(exc).__name__, exc)
            store.write_failure(key, exc, fingerprint=self.cell_fp[key.dataset, key.model])
            self.summary.failed.append((key, f"{type(exc).__name__}: {exc}"))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return "failed"
        finally:
            if is_main_process():
                store.release(key)

    def _wait_for(self, waiting: list[CellKey]) -> list[CellKey]:
        """Cells other live runs are computing: wait until they finish (skipped) or their claim
        goes stale (the owner died); the latter come back to be taken over."""
        time.sleep(CLAIM_POLL_SECONDS)
        finished = broadcast(
            {k.id for k in waiting if self._stored(k) is not None} if is_main_process() else None
        )
        pending: list[CellKey] = []
        for key in waiting:
            if key.id in finished:
                self.summary.skipped.append(key)
                self.bar.update(1)
            else:
                pending.append(key)
        if self.mode == "lines" and pending:
            say(f"waiting for {len(pending)} cell(s) claimed by another run in {self.out}")
        return pending
