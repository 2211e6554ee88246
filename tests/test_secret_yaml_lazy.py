"""``reconciler.secret`` no longer imports PyYAML (~20 ms of the operator's start, issue
15), and every YAML dump of a Secret still shows the mask, whoever imports PyYAML and
when.  Fresh interpreters: no other test's imports count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import canary

ROOT = Path(__file__).resolve().parents[1]

DUMPS = f"""
s = Secret({canary.PASSWORD!r})
out = [yaml.safe_dump({{"p": s}}), yaml.dump({{"p": s}}), yaml.dump([s], Dumper=yaml.CSafeDumper),
       yaml.dump([s], Dumper=yaml.CDumper)]
print("masked:", all("******" in o and {canary.PASSWORD!r} not in o for o in out))
print("hooks left:", sum(type(f).__name__ == "_AfterYamlImport" for f in sys.meta_path))
"""


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.splitlines()


def test_importing_the_secret_type_leaves_yaml_unimported() -> None:
    """Before, the module registered its representer at import (this test failed:
    ``yaml: True``)."""
    out = _run("import sys\nimport reconciler.secret\nprint('yaml:', 'yaml' in sys.modules)")
    assert out == ["yaml: False"]


@pytest.mark.parametrize("first", [
    "import reconciler.secret\nimport yaml",  # PyYAML after: registered at its import
    "import yaml\nimport reconciler.secret",  # PyYAML before: registered at once
    "import reconciler.secret\nimport yaml.dumper\nimport yaml",  # a submodule first
    "import reconciler.secret\nimport importlib\nyaml = importlib.import_module('yaml')",
])
def test_every_yaml_dump_shows_the_mask_whoever_imports_yaml_first(first: str) -> None:
    out = _run(f"import sys\n{first}\nfrom reconciler.secret import Secret\n{DUMPS}")
    assert out == ["masked: True", "hooks left: 0"], out
