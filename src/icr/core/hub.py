"""Hub model specs pinned to a commit.

A Hub model spec is `owner/name` or `owner/name@revision` (a branch, tag or commit). icr resolves it
once to a commit and loads from that commit's snapshot folder in the local Hub cache, so every
stage, every process and a resumed run read the same weights, and the run's manifest can record
which commit they were. Offline (`HF_HUB_OFFLINE`), the commit is read from the cache's refs;
online, the Hub is asked and the snapshot downloaded (safetensors and the small files a model
folder needs: pickle weights are refused at load anyway).
"""

from __future__ import annotations

import functools
from pathlib import Path

from icr.core.errors import ModelLoadError

# what `from_pretrained` of a model and its tokenizer reads; no pickles, no other frameworks' weights
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


def split_revision(spec: str) -> tuple[str, str | None]:
    """'owner/name@rev' → ('owner/name', 'rev'); 'owner/name' → ('owner/name', None)."""
    repo_id, sep, revision = spec.partition("@")
    return repo_id, (revision or None) if sep else None


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(repo_id: str, revision: str | None, repo_type: str = "model") -> Path | None:
    """The cached snapshot folder of `revision` (default main), found through the cache's refs, or None."""
    from huggingface_hub import try_to_load_from_cache

    marker = "config.json" if repo_type == "model" else "README.md"
    found = try_to_load_from_cache(repo_id, marker, revision=revision, repo_type=repo_type)
    if isinstance(found, str):
        return Path(found).parent
    return None


@functools.lru_cache(maxsize=32)
def hub_snapshot(spec: str) -> Path:
    """Local snapshot folder of a Hub model spec, at the commit its revision names now (see module
    doc); resolved once per process, so all stages of a run load the same commit."""
    repo_id, revision = split_revision(spec)
    if offline():
        folder = cached_snapshot(repo_id, revision)
        if folder is None:
            raise ModelLoadError(
                f"{spec}: HF_HUB_OFFLINE is set and revision {revision or 'main'} of this Hub model is not in "
                "the local cache; download it online (hf download) or give a local path"
            )
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=SNAPSHOT_FILES))
    except (HfHubHTTPError, OSError) as err:
        raise ModelLoadError(f"could not fetch Hub model {spec!r}: {err}") from None


def snapshot_commit(folder: str | Path) -> str | None:
    """The commit of a Hub cache snapshot folder (`…/snapshots/<commit>`), or None for any other folder."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--")):
        return folder.name
    return None


def is_hub_spec(spec: str) -> bool:
    """A model spec that names a Hub repository: not embedded, not a GGUF file, not an existing path."""
    return not spec.startswith("embedded:") and Path(spec).suffix != ".gguf" and not Path(spec).expanduser().exists()


def hub_commit(spec: str) -> str | None:
    """The commit a Hub model spec resolves to now (None for any other spec)."""
    return snapshot_commit(hub_snapshot(spec)) if is_hub_spec(spec) else None
