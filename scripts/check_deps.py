"""Check icr's declared dependencies against the registry (needs the package index; not in `make test`).

1. deptry: every imported package is declared, every declared one is used (pyproject's [tool.deptry]).
2. `pip install --dry-run ".[vllm]"` resolves to the same vLLM as `pip install --dry-run vllm` alone:
   the newest one installable here, not an older one pip backtracked to because a range of ours was
   too narrow. (The index's very newest release can be uninstallable on its own, e.g. a pinned
   dependency with no wheel yet; that is shown, not counted against icr.)
3. `pip install --dry-run . torch==2.11.0 transformers==5.17.0` resolves: icr installs beside a site
   image's torch and transformers without replacing them.

Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE_IMAGE = ("torch==2.11.0", "transformers==5.17.0")


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, capture_output=True, text=True)


def dry_run(*requirements: str) -> dict[str, str]:
    """{package: version} pip would install for `requirements` (its --report), or raise with pip's error."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = pip("install", "--dry-run", "--ignore-installed", "-q", "--report", str(report), *requirements)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "pip failed")
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def newest(package: str) -> str:
    listing = pip("index", "versions", package).stdout
    match = re.search(rf"^{package} \(([^)]+)\)", listing, re.MULTILINE)
    if not match:
        raise RuntimeError(f"pip index versions {package} gave no version")
    return match.group(1)


def check_imports() -> tuple[bool, str]:
    deptry = str(Path(sys.executable).parent / "deptry")
    done = subprocess.run([deptry, "src"], cwd=ROOT, capture_output=True, text=True)
    last = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, "deptry src: " + (last[-1] if last else "no output")


def check_vllm() -> tuple[bool, str]:
    resolved = dry_run(".[vllm]")
    alone = dry_run("vllm").get("vllm", "none")
    got = resolved.get("vllm", "none")
    versions = ", ".join(f"{name} {resolved[name]}" for name in ("torch", "transformers", "trl") if name in resolved)
    return got == alone, (
        f'pip install --dry-run ".[vllm]": vllm {got} (vllm alone: {alone}; newest listed: {newest("vllm")}), '
        f"with {versions}"
    )


def check_site_image() -> tuple[bool, str]:
    resolved = dry_run(".", *SITE_IMAGE)
    kept = all(resolved.get(pin.split("==")[0]) == pin.split("==")[1] for pin in SITE_IMAGE)
    return kept, f"pip install --dry-run . {' '.join(SITE_IMAGE)}: resolves, trl {resolved.get('trl')}"


def main() -> int:
    failed = False
    for check in (check_imports, check_vllm, check_site_image):
        try:
            ok, line = check()
        except RuntimeError as error:
            ok, line = False, f"{check.__name__}: {error}"
        failed |= not ok
        print(("ok    " if ok else "FAIL  ") + line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
