"""``./dev test`` warms pytest's assertion-rewrite cache beside mypy, and the run reads it
(tests/support/rewrite_cache.py): with PYTHONDONTWRITEBYTECODE=1 pytest never writes that
cache, and each xdist worker used to rewrite every test module itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                               "PYTHONPATH": str(ROOT), **env})


def test_the_warm_up_writes_the_rewrite_cache_that_a_later_run_reads(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("def test_x() -> None:\n    assert 1 + 1 == 2\n")
    # Without the warm-up, bytecode writing off: pytest rewrites and writes nothing.
    plain = _run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                  "-p", "no:cacheprovider"], tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert not list(tmp_path.glob("__pycache__/test_x.*pytest*.pyc"))

    warm = _run([sys.executable, "-m", "tests.support.rewrite_cache"], tmp_path)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "test_x.py::test_x" in warm.stdout
    assert len(list(tmp_path.glob("__pycache__/test_x.*pytest*.pyc"))) == 1

    # A later run, bytecode writing still off, loads the rewritten module from the cache
    # (pytest's trace says which) and its assertion is still rewritten (the failure
    # message shows the compared values).
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path,
                PYTEST_DEBUG="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"found cached rewritten pyc for {module}" in done.stderr
    assert f"rewriting {module!r}" not in done.stderr
    module.write_text("def test_x() -> None:\n    assert 1 + 1 == 3\n  \n")  # size changed
    failed = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], tmp_path)
    assert failed.returncode == 1
    assert "assert (1 + 1) == 3" in failed.stdout


def test_dev_test_runs_the_warm_up_beside_mypy() -> None:
    dev = (ROOT / "dev").read_text()
    branch = dev.split("\n  test)\n", 1)[1].split(";;", 1)[0]
    warm, mypy, pytest = (branch.index("-m tests.support.rewrite_cache"),
                          branch.index('"$VENV/bin/mypy"'), branch.index('"$VENV/bin/pytest"'))
    assert warm < mypy < pytest
    assert "&" in branch[warm:mypy]  # started in the background, mypy in the foreground
