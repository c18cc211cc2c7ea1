"""Every path of a run directory, in one place. Writers (`icr.runtime.rundir.RunDir`, the stages)
and readers (`icr status`, `icr report`, `icr export`) name files through it, so the layout below
is stated once:

    runs/NAME/
      config.yaml, manifest.json          resolved config; finished stages, versions, config hashes, failures
      .icr.lock                           while a command writes the run: its holder (`icr.runtime.runlock`)
      icr.log                             every command's log lines and library warnings (`icr.core.logs`)
      iter_<t>/generations/<lang>.jsonl   N responses per prompt from π^t
      iter_<t>/rewards/<lang>.jsonl       logp_policy, logp_ref, scored_tokens, reward per response
      iter_<t>/pairs.jsonl, pairs_stats.json
      iter_<t>/train_pairs.jsonl          what iteration t trains on when it replays earlier pairs
      iter_<t>/status/<stage>.json        a started stage's progress (`icr.runtime.status`)
      iter_<t>/cache/                     the reference log-probs of iteration t's training
      iter_<t>/model/                     π^{t+1} (+ train_metrics.json, README.md)
      tracking/iter_<t>/                  the experiment trackers' logs (`train.report_to`)
      report/                             `icr report`'s output
"""

from __future__ import annotations

from pathlib import Path

LOCK_NAME = ".icr.lock"
LOG_NAME = "icr.log"


class RunLayout:
    """The paths of the run directory at `root` (nothing is created or read here, except
    `iterations`, which lists the iteration folders present)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def log_file(self) -> Path:
        return self.root / LOG_NAME

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @staticmethod
    def stage_key(t: int, stage: str) -> str:
        """A stage's entry in the manifest: `iter_<t>/<stage>`."""
        return f"iter_{t}/{stage}"

    def iterations(self) -> list[int]:
        """The iterations that have a folder, in order."""
        return sorted(int(p.name[5:]) for p in self.root.glob("iter_*") if p.name[5:].isdigit() and p.is_dir())

    def iter_dir(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def generations_dir(self, t: int) -> Path:
        return self.iter_dir(t) / "generations"

    def rewards_dir(self, t: int) -> Path:
        return self.iter_dir(t) / "rewards"

    def pairs_file(self, t: int) -> Path:
        return self.iter_dir(t) / "pairs.jsonl"

    def pairs_stats_file(self, t: int) -> Path:
        return self.iter_dir(t) / "pairs_stats.json"

    def training_pairs_file(self, t: int) -> Path:
        """The pairs iteration t trains on when it replays earlier ones (`train.replay`)."""
        return self.iter_dir(t) / "train_pairs.jsonl"

    def status_file(self, t: int, stage: str) -> Path:
        return self.iter_dir(t) / "status" / f"{stage}.json"

    def model_dir(self, t: int) -> Path:
        """Where π^{t+1}, trained in iteration t, is saved."""
        return self.iter_dir(t) / "model"

    def train_metrics_file(self, t: int) -> Path:
        return self.model_dir(t) / "train_metrics.json"

    def tracking_dir(self, t: int) -> Path:
        """Where the experiment trackers of iteration t's training log (`train.report_to`)."""
        return self.root / "tracking" / f"iter_{t}"
