"""constraints.txt, the lock that scripts/bootstrap.sh, CI and the Dockerfiles install from, is in
step with pyproject.toml and with the environment the tests run in."""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]
# What only torch pins exactly: bootstrap.sh keeps a user's own torch and lets these follow it.
TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


def locked() -> dict[str, Version]:
    """The lock's pin of each package for this interpreter and platform (markers evaluated)."""
    pins: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        spec, _, marker = line.partition(";")
        name, version = spec.strip().split("==")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice for this interpreter"
        pins[key] = Version(version)
    return pins


def test_every_dependency_of_every_extra_is_locked_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = locked()
    for text in requirements:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is not in constraints.txt: run scripts/lock.sh"
        assert req.specifier.contains(pins[key], prereleases=True), (
            f"constraints.txt has {req.name}=={pins[key]}, outside pyproject's {req.specifier}: "
            "run scripts/lock.sh"
        )


def test_the_environment_is_the_locked_one():
    pins = locked()
    own_torch = Version(metadata.version("torch")).base_version != str(pins["torch"])
    wrong = []
    for dist in metadata.distributions():
        key = canonicalize_name(dist.metadata["Name"])
        if key not in pins or (own_torch and TORCH_FAMILY.match(key)):
            continue
        installed = Version(dist.version)
        if Version(installed.base_version) != pins[key] and installed != pins[key]:
            wrong.append(f"{key} {installed} (locked {pins[key]})")
    assert not wrong, "installed outside the lock (run scripts/bootstrap.sh): " + ", ".join(wrong)
    assert "transformers" in pins and "torch" in pins
