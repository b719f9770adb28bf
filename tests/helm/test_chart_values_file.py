"""values.yaml documents itself: every key the chart defines has a comment right above it."""

from __future__ import annotations

import re

# Keys whose contents are Kubernetes' own objects (or probe timings): the comment on the key
# covers their fields.
KUBERNETES_OBJECTS = {"resources", "downloadResources", "podSecurityContext", "securityContext",
                      "sseAnnotations", "startup", "readiness", "liveness", "labels"}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):")


def uncommented_keys(text: str) -> list[str]:
    missing = []
    ancestors: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = KEY.match(line)
        if match:
            indent, key = len(match["indent"]), match["key"]
            while ancestors and ancestors[-1][0] >= indent:
                ancestors.pop()
            covered = any(name in KUBERNETES_OBJECTS for _, name in ancestors)
            if not covered and not previous.lstrip().startswith("#"):
                missing.append(".".join([name for _, name in ancestors] + [key]))
            ancestors.append((indent, key))
        if line.strip():
            previous = line
    return missing


def test_every_value_is_commented(chart_dir):
    assert uncommented_keys((chart_dir / "values.yaml").read_text()) == []


def test_example_values_files_explain_their_sections(chart_dir):
    for name in ("values-cpu.yaml", "values-gpu.yaml"):
        text = (chart_dir / name).read_text()
        top_level = [m["key"] for m in map(KEY.match, text.splitlines()) if m and not m["indent"]]
        lines = text.splitlines()
        for key in top_level:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
            assert lines[index - 1].startswith("#"), f"{name}: {key} has no comment"


def test_checker_finds_an_uncommented_key():
    assert uncommented_keys("# -- ok\na: 1\nb:\n  # -- fine\n  c: 2\n  d: 3\n") == ["b", "b.d"]
