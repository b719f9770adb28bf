"""The one `pdserve` entry point: dispatches each subcommand to the module that owns it."""

from __future__ import annotations

import faulthandler
import importlib
import sys

# name -> (module with `main(argv) -> int`, one-line help). Modules are imported only when their
# subcommand runs, so `pdserve plan` never pays for torch and `pdserve bench` never for the engine.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.up", "run the whole system on this machine: Redis, prefill, decode, router"),
    "prefill": ("services.prefill.main", "run one prefill worker"),
    "decode": ("services.decode.main", "run one decode worker"),
    "worker": ("services.worker", "run one worker in any role (prefill, decode or both)"),
    "router": ("services.router.main", "run the OpenAI-compatible router"),
    "generate": ("services.generate", "generate text offline with the engine"),
    "profile": ("services.profile", "measure this machine's engine and write a planner profile"),
    "plan": ("planner.cli", "plan prefill/decode parallelism and placement for latency SLOs"),
    "bench": ("loadgen.cli", "measure TTFT, TPOT, SLO attainment and goodput of a server"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: pdserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `pdserve COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pdserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # A crash inside a C extension (torch, ucxx) then leaves every thread's Python stack in
    # the process's log instead of a silent exit.
    faulthandler.enable()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
