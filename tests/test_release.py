"""The version is stated once per place, and every place agrees (CONTRIBUTING.md,
"Versions, tags and releases")."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _released() -> list[str]:
    """Versions with a section in CHANGELOG.md, newest first."""
    text = (ROOT / "CHANGELOG.md").read_text()
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text, re.M)


def test_changelog_has_unreleased_on_top_then_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[0] == "[Unreleased]", headings[:2]
    assert _released() and _released()[0] == _version(), (
        f"pyproject.toml says {_version()}, the newest CHANGELOG.md release is "
        f"{_released()[:1]}")


def test_image_tags_are_the_version() -> None:
    version = _version()
    for rel in ("Dockerfile", "hack/e2e-kind.sh", "manifests/operator/base/deployment.yaml"):
        tags = re.findall(r"ghcr\.io/smtpctl/smtpctl:([\w.\-]+)", (ROOT / rel).read_text())
        assert tags and set(tags) == {version}, (rel, tags, version)


def test_docs_pin_released_tags_only() -> None:
    released = set(_released())
    pins = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        pins += [(doc.name, v) for v in re.findall(r"\brev: v(\d+\.\d+\.\d+)\b", doc.read_text())]
    assert pins, "no doc tells users which tag to pin any more: update this test"
    assert all(v in released for _, v in pins), (pins, sorted(released))
