"""A first ``apply`` starts its probe workers before it loads the resource models.

The workers need ~0.2 s to start Python and import the probe; started before ``apply``
imports pydantic, the models and the engine (~0.15-0.3 s of its own start-up), they are
ready on the other core by the time the input is validated (issue 15).  A module-level
import of the store, the engine or the models in the modules ``apply`` loads first (the
CLI's ``localcmd``, ``stores/local.py``, ``runtimes/probepool.py``) would undo that
silently: this test names which of them were loaded when the workers started.  A first
apply (no state directory yet: nothing can be cached, every resource is new) starts them
before it even imports the store.
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
         "reconciler.engine.assess", "reconciler.credentials.sources",
         "reconciler.stores.local")  # not sqlite3: coverage imports it in subprocesses

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


def _apply(e2e: Env, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, "apply", "-f", str(path), "--state", str(e2e.state),
         "--probe-workers", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_a_changed_input_starts_workers_once_the_input_cache_missed(e2e: Env) -> None:
    """With a state directory, the store is opened first: an input applied before as it
    is starts no worker (its cached validation is reused, nothing is due); a changed one
    starts them when the cache misses, still before the models are imported."""
    fleet = e2e.write("fleet.yaml", *(e2e.smtp(f"r{i}", selected=i == 0) for i in range(3)))
    assert _apply(e2e, fleet).returncode == 0
    again = _apply(e2e, fleet)
    assert again.returncode == 0 and "AT_PRESTART" not in again.stderr, again.stderr
    changed = e2e.write("fleet.yaml", *(e2e.smtp(f"r{i}", selected=i == 0) for i in range(4)))
    out = _apply(e2e, changed)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("AT_PRESTART ['reconciler.stores.local']") == 1, \
        out.stderr
    assert "4 resources: 1 created, 3 unchanged; 1 tested" in out.stdout, out.stdout


def test_an_invalid_first_input_contacts_no_relay_though_workers_started(e2e: Env) -> None:
    """Workers start before the input is validated; the whole input is still validated
    before any relay is contacted: one bad document after valid ones, no connection, no
    state written (tests/test_probe_pool.py: workers started ahead end with the apply)."""
    docs = [e2e.smtp(f"r{i}") for i in range(3)]
    bad = e2e.smtp("r3")
    bad["spec"]["port"] = "not a port"
    fleet = e2e.write("fleet.yaml", *docs, bad)
    before = e2e.relay.connections
    out = _apply(e2e, fleet)
    assert out.returncode == 1, out.stderr
    assert "AT_PRESTART []" in out.stderr, out.stderr  # they did start ahead
    assert e2e.relay.connections == before
    assert not e2e.state.exists()
