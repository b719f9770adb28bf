"""`pdserve generate`: stream one completion from the engine to stdout, no server involved."""

from __future__ import annotations

import argparse
import sys

from services.engine.errors import EngineError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdserve generate",
        description="Generate text for one prompt with the pdserve engine and stream it to stdout.",
    )
    p.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2' (built in), a Hugging Face model directory or a .gguf file",
    )
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt as one user message in the model's chat template",
    )
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from services.engine.llm import LLM
    from services.engine.sampling_params import SamplingParams

    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
        )
        llm = LLM(
            args.model,
            dtype=args.dtype,
            device=args.device,
            threads=args.threads,
            kv_cache_memory_gib=0.25,
        )
        prompt = args.prompt
        if args.chat:
            prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])

        def show(_: int, piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        llm.generate([prompt], params, on_text=show)
        sys.stdout.write("\n")
    except EngineError as e:
        print(f"pdserve generate: {e}", file=sys.stderr)
        return 2
    return 0
