"""hack/e2e-kind.sh (the real-cluster scenarios) must be able to fail.

Under ``set -e`` a bare ``! kubectl ...`` never stops the script (bash exempts negated
commands from errexit; shellcheck SC2251), and a step that only prints passes whatever it
prints.  The script is checked here without a cluster: it parses (``bash -n``), shellcheck
finds nothing, and every step asserts something (an ``expect_eq``, an ``eventually``, a
``kubectl wait``/``rollout status``, or an explicit ``fail``) before the next one starts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.peers import require

SCRIPT = Path(__file__).resolve().parent.parent / "hack" / "e2e-kind.sh"
ASSERTS = re.compile(r"\bexpect_eq\b|\beventually\b|\bkubectl\b.*\bwait\b|rollout status"
                     r"|\|\| fail\b|^\s*fail\b", re.M)


def test_script_parses() -> None:
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def test_shellcheck_is_clean() -> None:
    require("shellcheck")
    r = subprocess.run(["shellcheck", "--severity=info", str(SCRIPT)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_every_step_asserts_its_outcome() -> None:
    text = SCRIPT.read_text()
    assert not re.search(r"^\s*! ", text, re.M), "a bare '! cmd' cannot fail under set -e"
    steps = re.split(r'^step "', text, flags=re.M)[1:]
    assert len(steps) >= 7
    silent = [s.splitlines()[0] for s in steps if not ASSERTS.search(s)]
    assert silent == []


def test_the_check_finds_a_silent_step() -> None:
    """The structural check above is not vacuous."""
    silent = 'step "prints only"\nkubectl get pods\n'
    assert not ASSERTS.search(silent.split('step "')[1])
