"""`JudgementCache`: one small JSON file per judgement, named by the SHA-256 of (judge identity,
prompt version, messages): the messages hold the instruction and both outputs in their shown order.
Files are written atomically, so concurrent runs sharing a cache are safe (the worst case is the
same judgement computed twice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from icr.core.io import read_json, write_json_atomic
from icr.eval.judges.base import PROMPT_VERSION, Judgement

log = logging.getLogger(__name__)


class JudgementCache:
    """One JSON file per judgement under `root/<2 hex>/<sha256>.json`, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(judge_id: str, messages: list[dict[str, str]]) -> str:
        payload = json.dumps(
            {"judge": judge_id, "prompt_version": PROMPT_VERSION, "messages": messages},
            ensure_ascii=False,
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Judgement | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            record = read_json(path)
            return Judgement(**{k: record[k] for k in ("p_first", "rule", "raw", "served_model", "usage")})
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable cached judgement ignored", path)
            return None

    def put(self, key: str, judge_id: str, judgement: Judgement) -> None:
        write_json_atomic(
            self._path(key), {"judge": judge_id, **asdict(judgement), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        )
