"""smtpctl loads no pydantic plugins (docs/cli.md, "Installing"): pydantic reads the entry
points of every installed distribution before its first model unless
``PYDANTIC_DISABLE_PLUGINS`` says not to (~8-10 ms of each ``apply`` with ~100 packages
installed).  Counted in a fresh interpreter (pydantic remembers its plugins once read):
the calls of ``importlib.metadata.entry_points`` for pydantic's group while ``apply``
builds the resource models; a value the user set is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib.metadata as md
import sys

real = md.entry_points
calls = []

def counted(**kw):
    calls.append(kw.get("group"))
    return real(**kw)

md.entry_points = counted  # before pydantic imports it
from reconciler.cli.main import main

code = main(sys.argv[1:])
print("PYDANTIC_SCANS", calls.count("pydantic"), "exit", code)
"""

BAD = """apiVersion: smtp.reconciler.dev/v1alpha1
kind: ExternalSmtp
metadata: {name: r0}
spec: {host: relay.example.test, port: "not a port"}
"""


def _apply(tmp_path: Path, env_value: str | None) -> str:
    """An apply of an invalid input (exit 1, nothing contacted): it still builds the
    models (the input is validated with them after the schema)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if env_value is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "apply", "-f", str(bad), "--state",
         str(tmp_path / "state")], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=env)
    assert "exit 1" in out.stdout, (out.stdout, out.stderr)
    assert not (tmp_path / "state").exists()  # an invalid input changes nothing
    return out.stdout


def test_apply_reads_no_entry_points_for_pydantic_plugins(tmp_path: Path) -> None:
    assert "PYDANTIC_SCANS 0 " in _apply(tmp_path, None)


def test_a_value_the_user_set_is_kept(tmp_path: Path) -> None:
    assert "PYDANTIC_SCANS 1 " in _apply(tmp_path, "")
