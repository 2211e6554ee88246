"""pyproject.toml's dependency ranges match what CI tests.

CI installs exactly the pins of ``constraints.txt``.  A floor below the pin would promise
versions nobody tested (``aiosmtplib>=5.1`` allowed 5.1.2, on which 26 of the 30 probe
tests failed), so every direct dependency's floor *is* its pin: raising a pin raises the
floor in the same commit.  Upper caps exist only where the code relies on a private API of
the dependency (``tests/test_dependency_contracts.py``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def _requirements() -> list[Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    return [Requirement(r) for r in (
        *project["dependencies"],
        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra))]


REQUIREMENTS = _requirements()


@pytest.mark.parametrize("req", REQUIREMENTS, ids=[r.name for r in REQUIREMENTS])
def test_floor_is_the_tested_pin(req: Requirement) -> None:
    pins = _pins()
    pin = pins.get(canonicalize_name(req.name))
    assert pin is not None, f"{req.name} is not pinned in constraints.txt"
    assert req.specifier.contains(pin, prereleases=True), (
        f"{req.name}: the pinned {pin} is outside {req.specifier}")
    floors = [s.version for s in req.specifier if s.operator == ">="]
    assert floors == [pin], (
        f"{req.name}{req.specifier}: the floor must be the version CI tests (>={pin})")
