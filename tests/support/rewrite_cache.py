"""Write pytest's assertion-rewrite cache of the test modules before the suite runs.

pytest compiles every test module (and ``conftest.py``) through its assertion rewriter and
keeps the result in ``tests/__pycache__/*-pytest-*.pyc`` - unless bytecode writing is off,
as on this project's machines (``PYTHONDONTWRITEBYTECODE=1``).  Then every xdist worker
rewrites and compiles all ~150 test modules itself at each run: ~12 s of one core, ~24 s
under ``--cov`` (coverage traces the rewriter), and the workers do it side by side before
running any test.  pytest *reads* a cached rewritten module whatever that setting, so
``./dev test`` runs this module once beside mypy (which uses one core), and the workers
start from the cache.

``python -m tests.support.rewrite_cache [PYTEST ARGS]`` is a ``pytest --collect-only``
with bytecode writing on.  It changes nothing a test sees: a cached module is used only
while its source's size and mtime match (pytest's own check).  Its exit status is
pytest's; ``./dev test`` ignores it (the real run reports a collection error itself).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = False  # what PYTHONDONTWRITEBYTECODE set; read at each import
    import pytest

    return int(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                            "-p", "no:xdist", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
