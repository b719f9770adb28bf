"""A GGUF file, converted once into a Hugging Face directory that loads in a fraction of the time.

Parsing GGUF metadata (49k tokens and merges as separate fields) and dequantizing every tensor
costs seconds per process; every worker of a deployment would pay it at each start. The first
load writes float32 safetensors, config.json and tokenizer.json under the cache directory
(PDSERVE_CACHE, default ~/.cache/pdserve), keyed by the file's path, size and mtime; later loads
read that. Writes go to a temporary directory renamed into place, so concurrent first starts are
safe. If the cache cannot be written, the GGUF file is used directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from services.engine.checkpoint import Checkpoint

log = logging.getLogger("pdserve.engine")

FORMAT_VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("PDSERVE_CACHE") or Path.home() / ".cache" / "pdserve")


def cache_dir_for(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{digest}"


def lookup(gguf: Path) -> Path | None:
    """The converted directory for this file, if a previous start made it."""
    directory = cache_dir_for(gguf)
    return directory if (directory / "complete").is_file() else None


def store(ckpt: Checkpoint) -> Path | None:
    """Convert `ckpt` (a GGUF checkpoint) into the cache; None if the cache is not writable."""
    from safetensors.torch import save_file

    from services.engine.tokenizer import Tokenizer

    target = cache_dir_for(ckpt.path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    except OSError as e:
        log.info("not caching %s (%s); loading the GGUF file directly", ckpt.path.name, e)
        return None
    try:
        tokenizer = Tokenizer.from_checkpoint(ckpt)
        tokenizer.backend.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "chat_template": tokenizer.chat_template,
                    "bos_token": tokenizer.bos_token,
                    "eos_token": tokenizer.eos_token,
                    "add_bos_token": tokenizer.add_bos,
                }
            )
        )
        (tmp / "config.json").write_text(json.dumps(ckpt.config.to_hf_dict(), indent=1))
        tensors = {name: t.contiguous() for name, t in ckpt.tensors()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"source": ckpt.path.name})
        (tmp / "complete").write_text("")
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        return target if lookup(ckpt.path) else None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("not caching %s (%s); loading the GGUF file directly", ckpt.path.name, e)
        return None
