"""A first ``apply`` starts its probe workers before it loads the resource models.

The workers need ~0.2 s to start Python and import the probe; started before ``apply``
imports pydantic, the models and the engine (~0.15-0.3 s of its own start-up), they are
ready on the other core by the time the input is validated (issue 15).  A module-level
import of the store, the engine or the models in the modules ``apply`` loads first (the
CLI's ``localcmd``, ``stores/local.py``, ``runtimes/probepool.py``) would undo that
silently: this test names which of them were loaded when the workers started.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.engine_env import Env, e2e_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from reconciler.runtimes import probepool

real = probepool.Prestarted.__init__
heavy = ("pydantic", "reconciler.resources", "reconciler.engine.reconcile",
         "reconciler.engine.assess", "reconciler.credentials.sources")

def init(self, count):
    print("AT_PRESTART", sorted(m for m in heavy if m in sys.modules), file=sys.stderr)
    real(self, count)

probepool.Prestarted.__init__ = init
from reconciler.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_workers_start_before_the_models_are_imported(e2e: Env) -> None:
    fleet = e2e.write("fleet.yaml", *(e2e.smtp(f"r{i}", selected=i == 0) for i in range(3)))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "apply", "-f", str(fleet), "--state", str(e2e.state),
         "--probe-workers", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "AT_PRESTART []" in out.stderr, out.stderr
    assert "3 resources: 3 created; 3 tested" in out.stdout, out.stdout
