"""`icr status RUN_DIR`: where a run stands, read from its folder alone (works from another shell
while the run goes, on any machine that sees the folder).

For each iteration and stage: done (from `manifest.json`), running (records written / expected,
rate since the stage started, ETA), interrupted (started here, its process is gone), or not
started. Every stage, when it starts (`icr.stages.Stage.execute`), writes
`iter_<t>/status/<stage>.json`: when, how many units it expects and had already (a resumed stage),
which JSONL files hold one record per unit, the process id and host; training also updates it with
its optimizer steps. Records are counted in those files and in the part files of sharded processes
(`icr.runtime.jobs`), one per line.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from icr.core.errors import DataError
from icr.core.progress import format_duration
from icr.runtime.layout import RunLayout
from icr.runtime.status import count_records


@dataclass
class StageStatus:
    iteration: int
    stage: str
    state: str  # done | running | interrupted | not started
    done: int | None = None
    expected: int | None = None
    unit: str = ""
    rate_per_s: float | None = None
    eta_s: float | None = None
    finished: str | None = None

    def describe(self) -> str:
        head = f"iter {self.iteration}  {self.stage:<8}  {self.state}"
        if self.state == "done":
            return head + (f"  ({self.finished})" if self.finished else "")
        if self.state == "not started":
            return head
        count = f"{self.done}/{self.expected if self.expected is not None else '?'} {self.unit}"
        if self.expected:
            count += f" ({100 * (self.done or 0) / self.expected:.1f}%)"
        rate = f" | {self.rate_per_s:.3g} {self.unit}/s" if self.rate_per_s else ""
        eta = f" | ETA {format_duration(self.eta_s)}" if self.eta_s is not None and self.state == "running" else ""
        return f"{head}  {count}{rate}{eta}"


def _process_alive(info: dict) -> bool | None:
    """Whether the stage's process still runs (None: it ran on another host, cannot tell)."""
    if info.get("host") != socket.gethostname() or "pid" not in info:
        return None
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(root: Path, t: int, stage: str, info: dict, now: float) -> StageStatus:
    done = count_records(root, info["records"]) if info.get("records") else info.get("done", 0)
    expected = info.get("expected")
    if expected is not None:
        done = min(done, expected)
    elapsed = now - info.get("started", now)
    progressed = done - info.get("done_at_start", 0)
    rate = progressed / elapsed if elapsed > 0 and progressed > 0 else None
    eta = (expected - done) / rate if rate and expected is not None else None
    state = "interrupted" if _process_alive(info) is False else "running"
    return StageStatus(t, stage, state, done, expected, info.get("unit", ""), rate, eta)


def run_status(root: str | Path, stages: Sequence[str], now: float | None = None) -> list[StageStatus]:
    """The status of every iteration and of each of `stages` (in order) of the run in `root`."""
    root, layout = Path(root), RunLayout(root)
    manifest_path = layout.manifest_file
    if not manifest_path.exists() and not layout.iterations():
        raise DataError(f"{root}: not a run directory (no manifest.json, no iter_* folder)")
    now = time.time() if now is None else now
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"stages": {}}
    started = {}
    for path in root.glob("iter_*/status/*.json"):
        info = json.loads(path.read_text())
        started[(info["iteration"], info["stage"])] = info
    iterations = _iterations(root, manifest, started)
    out = []
    for t in range(iterations):
        for stage in stages:
            entry = manifest["stages"].get(RunLayout.stage_key(t, stage), {})
            if entry.get("status") == "done":
                out.append(StageStatus(t, stage, "done", finished=entry.get("finished")))
            elif (t, stage) in started:
                out.append(_running(root, t, stage, started[(t, stage)], now))
            else:
                out.append(StageStatus(t, stage, "not started"))
    return out


def _iterations(root: Path, manifest: dict, started: dict) -> int:
    """T from the run's config.yaml and the status files of started stages, else the iterations seen."""
    seen = [info.get("iterations", 0) for info in started.values()]  # a resumed run may have raised T
    config = RunLayout(root).config_file
    if config.exists():
        import yaml

        value = (yaml.safe_load(config.read_text()) or {}).get("iterations")
        if isinstance(value, int):
            return max([value, *seen])
    seen += [int(k.split("/")[0].removeprefix("iter_")) + 1 for k in manifest["stages"]]
    return max(seen, default=1)


def format_status(root: str | Path, rows: list[StageStatus]) -> str:
    lines = [f"run: {root}"]
    lines += [row.describe() for row in rows]
    done = sum(r.state == "done" for r in rows)
    lines.append(f"{done}/{len(rows)} stages done")
    return "\n".join(lines)


def status_json(rows: list[StageStatus]) -> list[dict]:
    return [asdict(r) for r in rows]
