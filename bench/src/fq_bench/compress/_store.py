"""The output folder of one run: resumable steps, each finished one marked atomically.

A step writes its files, then its marker ``.fq_compress/<step>.json`` (through a temporary file
and ``os.replace``): a marker exists only for a step whose files were all written, so a run killed
at any point redoes at most the step it was in. ``run.json`` holds what every output depends on;
a folder holding a run with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fq_data import atomic_write_bytes

logger = logging.getLogger("fq_bench.compress")

_MARKERS = ".fq_compress"


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


class RunFolder:
    """The folder ``out`` of one run and its step markers.

    Args:
        out: the folder (created when missing).
        inputs: what the outputs depend on (settings, the weights' sha256, the data source); it
            is written to ``run.json`` the first time and must match on every resume.
    """

    def __init__(self, out: str | Path, inputs: dict[str, Any]):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.inputs = json.loads(json.dumps(inputs, sort_keys=True))
        run = self.out / "run.json"
        if run.is_file():
            before = json.loads(run.read_text())
            changed = sorted(
                k for k in set(before) | set(self.inputs) if before.get(k) != self.inputs.get(k)
            )
            if changed:
                raise ValueError(
                    f"--out {self.out} holds a run with other inputs (differing: "
                    f"{', '.join(changed)}); choose another --out folder, or delete this one to "
                    "start over"
                )
        else:
            write_json(run, self.inputs)

    def path(self, name: str) -> Path:
        """``out/name``, its parent folders created."""
        p = self.out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _marker(self, step: str) -> Path:
        return self.out / _MARKERS / f"{step}.json"

    def done(self, step: str) -> dict[str, Any] | None:
        """The record of a finished ``step`` whose files are all still there, else ``None``."""
        marker = self._marker(step)
        if not marker.is_file():
            return None
        record = json.loads(marker.read_text())
        missing = [f for f in record.get("files", []) if not (self.out / f).is_file()]
        if missing:
            logger.warning("step %s: %s missing, redoing it", step, ", ".join(missing))
            return None
        return record

    def finish(self, step: str, *, files: list[str], **info: Any) -> dict[str, Any]:
        """Mark ``step`` finished: its ``files`` (relative to ``out``) and any JSON ``info``."""
        record = {"step": step, "files": files, **info}
        write_json(self._marker(step), record)
        return record
