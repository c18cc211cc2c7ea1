"""Golden outputs: the sha256 of every file a fixed tiny-model `icr run` and `icr eval` write.

    PYTHONPATH=src python scripts/record_golden.py            # record tests/golden/run_and_eval.json
    PYTHONPATH=src python scripts/record_golden.py --check    # rerun and compare

The run: two tiny random Llama models (policy seed 0, reference seed 1) with the real SmolLM2
tokenizer, the embedded demo prompts in en and es (3 ids), one iteration of generate → reward →
pairs → train. The evaluation: `icr eval --run-dir` of that run (pi0 and pi1) on the first 3
X-AlpacaEval instructions in en and es (copied from ../shared/data), judged offline by the tiny
reference model (`--judge hf`), without the length-controlled win rate.

Both commands run as subprocesses of this interpreter with the `icr` found on PYTHONPATH, so the
same script records the hashes of one tree's code and checks another's. Everything runs on one
thread (results depend on the kernels' reduction order) in a working folder addressed by relative
paths, so no absolute path reaches an output file.

What is normalised, and why (nothing else is):
* manifest.json: `created`/`finished` timestamps and `versions` (library versions of the machine)
  are dropped; the stages, config hashes and record counts stay.
* results.json: the `finished` timestamp is dropped.
* train_metrics.json: wall-clock figures (`train_runtime_s`, and TRL's `train_runtime`,
  `*_per_second` in the log history) are dropped.
* iter_*/cache/ref_logps-<key>.json: the key in the file name is a model fingerprint (a cache key,
  not an output), so the file is hashed under the name `ref_logps.json`; its content is compared.
* iter_*/status/<stage>.json (`icr status`'s files): the wall-clock `started`/`updated` times and
  the process (`pid`, `host`) are dropped; the stage, units and counts stay.
* report/report.json (`icr report`, written at the end of `icr run`): the stages' `finished`
  times, the library `versions` and the training `runtime_s` are dropped; report/report.md: the
  training table's time cell is replaced by `<time>`.
* icr.log (the run's log file: timestamps, library warnings) is not hashed.
The hashes hold for one build of torch/transformers on one kind of CPU: the golden file records
them, and `--check` (and tests/test_golden.py) refuse to compare across others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import save_tiny  # noqa: E402  (the tests' tiny model, one definition)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "run_and_eval.json"
X_ALPACAEVAL = REPO.parent / "shared" / "data" / "x-alpacaeval"
REFERENCE = "gpt-4-turbo-2024-04-09"
LANGUAGES = ("en", "es")
FIXED_MTIME = 1_700_000_000  # model files get this mtime: fingerprints read (name, size, mtime)

RUN_FLAGS = {
    "name": "golden",
    "output_dir": "runs",
    "iterations": "1",
    "models.policy": "models/policy",
    "models.reference": "models/reference",
    "models.device": "cpu",
    "data.prompts": "embedded:demo",
    "data.languages": ",".join(LANGUAGES),
    "data.limit": "3",
    "generate.n": "3",
    "generate.max_new_tokens": "6",
    "generate.batch_prompts": "2",
    "reward.batch_prompts": "2",
    "pairs.language_filter": "false",
    "train.batch_size": "2",
    "train.grad_accum": "1",
    "train.learning_rate": "1e-3",
    "train.max_length": "96",
    "train.warmup_ratio": "0.0",
}
EVAL_ARGS = [
    "--run-dir",
    "runs/golden",
    "--languages",
    ",".join(LANGUAGES),
    "--prompts",
    "bench",
    "--limit",
    "3",
    "--judge",
    "hf",
    "--judge-model",
    "models/reference",
    "--judge-cache",
    "judge-cache",
    "--no-lc",
    "--max-new-tokens",
    "8",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--output",
    "eval",
]
TIMING_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
STATUS_CLOCK_KEYS = ("started", "updated", "pid", "host")


def environment() -> dict[str, str]:
    """What the hashes depend on besides the code: the numeric libraries and the CPU kind."""
    from importlib import metadata

    return {
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "trl": metadata.version("trl"),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _tiny_model(tokenizer, seed: int, folder: Path) -> None:
    """The tests' tiny model (`tests/helpers.save_tiny`), with fixed file times."""
    save_tiny(tokenizer, folder, seed)
    for file in folder.iterdir():
        os.utime(file, (FIXED_MTIME, FIXED_MTIME))


def _benchmark(folder: Path) -> None:
    """The first 3 X-AlpacaEval instructions (and reference outputs) of each language."""
    for sub in ("prompts", f"reference/{REFERENCE}"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for lang in LANGUAGES:
            records = json.loads((X_ALPACAEVAL / sub / f"{lang}.json").read_text(encoding="utf-8"))[:3]
            (folder / sub / f"{lang}.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")


def _icr(args: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run([sys.executable, "-m", "icr.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"icr {args[0]} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def run_fixed(workdir: Path) -> None:
    """Build the models and the benchmark in `workdir`, then `icr run` and `icr eval` there."""
    from icr.core.models import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path("embedded:smollm2-135m-instruct"))
    _tiny_model(tokenizer, 0, workdir / "models" / "policy")
    _tiny_model(tokenizer, 1, workdir / "models" / "reference")
    _benchmark(workdir / "bench")
    _icr(["run", *(arg for key, value in RUN_FLAGS.items() for arg in (f"--{key}", value))], workdir)
    _icr(["eval", *EVAL_ARGS], workdir)


def _normalised_report(name: str, data: bytes) -> bytes:
    if name == "report.md":
        return re.sub(rb"\| [^|]* s \|\n", b"| <time> |\n", data)
    report = json.loads(data)
    report.pop("versions", None)
    for row in report.get("status", []):
        row.pop("finished", None)
    for summary in report.get("training", {}).values():
        summary.pop("runtime_s", None)
    return json.dumps(report, sort_keys=True).encode()


def _normalised(rel: str, data: bytes) -> tuple[str, bytes]:
    """(name, bytes) a file is hashed under; see the module docstring for each case."""
    name = Path(rel).name
    if Path(rel).parent.name == "status" and name.endswith(".json"):
        status = {k: v for k, v in json.loads(data).items() if k not in STATUS_CLOCK_KEYS}
        return rel, json.dumps(status, sort_keys=True).encode()
    if Path(rel).parent.name == "report" and name in ("report.json", "report.md"):
        return rel, _normalised_report(name, data)
    if name == "manifest.json":
        manifest = json.loads(data)
        for key in ("created", "versions"):
            manifest.pop(key, None)
        for stage in manifest.get("stages", {}).values():
            stage.pop("finished", None)
        return rel, json.dumps(manifest, sort_keys=True).encode()
    if name == "results.json":
        results = json.loads(data)
        results.pop("finished", None)
        return rel, json.dumps(results, sort_keys=True).encode()
    if name == "train_metrics.json":
        metrics = json.loads(data)
        metrics.pop("train_runtime_s", None)
        for entry in metrics.get("log_history", []):
            for key in TIMING_KEYS:
                entry.pop(key, None)
        return rel, json.dumps(metrics, sort_keys=True).encode()
    if name.startswith("ref_logps-") and name.endswith(".json"):
        return str(Path(rel).parent / "ref_logps.json"), data
    return rel, data


def output_hashes(workdir: Path) -> dict[str, str]:
    """sha256 of every file under the run folder and the evaluation folder (normalised as above)."""
    hashes = {}
    for top in ("runs/golden", "eval"):
        for path in sorted((workdir / top).rglob("*")):
            if path.is_file() and path.name != "icr.log":  # the run's log: timestamps, library warnings
                rel, data = _normalised(str(path.relative_to(workdir)), path.read_bytes())
                hashes[rel] = hashlib.sha256(data).hexdigest()
    return dict(sorted(hashes.items()))


def compute(workdir: Path | None = None) -> dict:
    if not X_ALPACAEVAL.exists():
        raise FileNotFoundError(f"{X_ALPACAEVAL}: the shared X-AlpacaEval data is needed")
    with tempfile.TemporaryDirectory(prefix="icr-golden-") as tmp:
        folder = Path(workdir or tmp)
        if workdir is not None:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        run_fixed(folder)
        return {"environment": environment(), "files": output_hashes(folder)}


def compare(recorded: dict, current: dict) -> list[str]:
    """Differences between two golden records (empty: byte-identical outputs)."""
    old, new = recorded["files"], current["files"]
    problems = [f"missing: {f}" for f in old if f not in new] + [f"new file: {f}" for f in new if f not in old]
    problems += [f"differs: {f}" for f in old if f in new and old[f] != new[f]]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Rerun and compare with the recorded hashes.")
    parser.add_argument("--golden", type=Path, default=GOLDEN, help="Golden file to write or check.")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the outputs in this folder.")
    args = parser.parse_args()
    current = compute(args.workdir)
    if not args.check:
        args.golden.parent.mkdir(parents=True, exist_ok=True)
        args.golden.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
        print(f"{len(current['files'])} hashes written to {args.golden}")
        return 0
    recorded = json.loads(args.golden.read_text(encoding="utf-8"))
    if recorded["environment"] != current["environment"]:
        print(f"recorded on {recorded['environment']}, this is {current['environment']}: not comparable")
        return 2
    problems = compare(recorded, current)
    print("\n".join(problems) or f"all {len(current['files'])} files byte-identical")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
