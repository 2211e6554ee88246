"""Experiment: compile the engine's and the local store's modules with mypyc, outside the build.

    .venv/bin/python -P bench/mypyc_build.py --out /tmp/smtpctl-mypyc [--module M ...]
                     [--opt-level 3] [--check-imports]

Session 13's feasibility experiment (``docs/benchmarks/engine.md``, Round 13).  Nothing of
the package's build changes: the checkout's files (tracked and uncommitted, as
``git ls-files`` lists them) are copied to ``--out``, the modules are compiled there by the
pinned ``mypyc`` (it ships with mypy), and the extension modules are left next to their
sources, where Python's import system prefers them to the ``.py``.  Point a run at that tree:

* the benches insert their own checkout first on ``sys.path``, so run the copy's scripts:
  ``cd OUT && ../path/to/.venv/bin/python -P bench/engine.py --store local`` (the same as
  ``./dev bench engine``) and ``bench/fleet.py`` (its apply and workers use OUT too);
* anything else: ``PYTHONPATH=OUT`` (e.g. ``python -m pytest tests/test_engine.py`` from
  OUT).

mypyc is run with the ``[tool.mypy]`` settings of ``pyproject.toml`` minus the pydantic
plugin (no pydantic model is compiled), written to a separate config file, and with
``pyproject.toml`` moved aside while it runs: mypyc builds through the virtualenv's
setuptools (65.5; the isolated build's ``setuptools>=77`` would not), which rejects the
project's ``license = "Apache-2.0"``.

Excluded by default, because mypyc cannot compile them as they are:
``reconciler/engine/fairslots.py`` (an ``asynccontextmanager`` async generator:
"async generators are unimplemented") and ``reconciler/resources.py`` (pydantic models: a
field declared ``X | None`` with the default ``Field(...)`` fails mypyc's type check of
class attributes at import).  ``--check-imports`` imports every compiled module from the
copy in a fresh interpreter and checks it is the extension module.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MODULES = (
    "reconciler/engine/__init__.py",
    "reconciler/engine/active.py",
    "reconciler/engine/assess.py",
    "reconciler/engine/backoff.py",
    "reconciler/engine/conditions.py",
    "reconciler/engine/digest.py",
    "reconciler/engine/plan.py",
    "reconciler/engine/policy.py",
    "reconciler/engine/reconcile.py",
    "reconciler/engine/record.py",
    "reconciler/engine/selection.py",
    "reconciler/engine/world.py",
    "reconciler/stores/base.py",
    "reconciler/stores/local.py",
    "reconciler/status.py",
)


def copy_checkout(src: Path, out: Path) -> int:
    """Copy the files ``git ls-files`` lists (with uncommitted edits) from src to out."""
    listed = subprocess.run(["git", "-C", str(src), "ls-files", "-z"], check=True,
                            capture_output=True).stdout.decode().split("\0")
    copied = 0
    for rel in filter(None, listed):
        path = src / rel
        if not path.is_file():
            continue  # deleted in the work tree
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        copied += 1
    return copied


def mypy_config(src: Path, dest: Path) -> None:
    """The project's [tool.mypy] settings minus plugins, as a TOML file mypy reads."""
    with (src / "pyproject.toml").open("rb") as f:
        mypy = tomllib.load(f)["tool"]["mypy"]
    lines = ["[tool.mypy]"]
    overrides = mypy.pop("overrides", [])
    mypy.pop("plugins", None)
    mypy.pop("files", None)
    lines += [f"{key} = {_toml(value)}" for key, value in mypy.items()]
    for override in overrides:
        lines.append("[[tool.mypy.overrides]]")
        lines += [f"{key} = {_toml(value)}" for key, value in override.items()]
    dest.write_text("\n".join(lines) + "\n")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def compile_modules(out: Path, modules: list[str], opt_level: int, log: Path) -> float:
    """Run mypyc in ``out``; returns the wall seconds.  Raises on failure (see ``log``)."""
    config = out / "mypyc-experiment.toml"
    mypy_config(out, config)
    pyproject = out / "pyproject.toml"
    aside = out / "pyproject.toml.aside"
    pyproject.rename(aside)
    env = dict(os.environ, MYPYC_OPT_LEVEL=str(opt_level))
    mypyc = Path(sys.executable).with_name("mypyc")
    started = time.monotonic()
    try:
        with log.open("w") as f:
            done = subprocess.run([str(mypyc), "--config-file", str(config), *modules],
                                  cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  check=False)
    finally:
        aside.rename(pyproject)
    if done.returncode:
        raise SystemExit(f"mypyc failed ({done.returncode}); see {log}")
    return time.monotonic() - started


def check_imports(out: Path, modules: list[str]) -> list[str]:
    """Import each compiled module from ``out`` in a fresh interpreter; return problems."""
    names = [m.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
             for m in modules]
    code = ("import importlib, sys\n"
            "bad = []\n"
            f"for name in {names!r}:\n"
            "    f = importlib.import_module(name).__file__ or ''\n"
            "    if not f.endswith('.so'):\n"
            "        bad.append(name + ' -> ' + f)\n"
            "print('\\n'.join(bad))\n")
    env = dict(os.environ, PYTHONPATH=str(out))
    done = subprocess.run([sys.executable, "-c", code], cwd=out, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return [done.stderr.strip()]
    return [line for line in done.stdout.splitlines() if line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch directory (replaced)")
    ap.add_argument("--module", action="append",
                    help="a source path to compile (repeatable; default: the engine's set)")
    ap.add_argument("--opt-level", type=int, default=3, choices=(0, 1, 2, 3))
    ap.add_argument("--check-imports", action="store_true")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit("--out must be outside the checkout")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    modules = list(args.module or DEFAULT_MODULES)
    copied = copy_checkout(ROOT, out)
    seconds = compile_modules(out, modules, args.opt_level, out / "mypyc-build.log")
    print(f"{copied} files copied to {out}; {len(modules)} modules compiled in "
          f"{seconds:.0f} s (MYPYC_OPT_LEVEL={args.opt_level}; log: mypyc-build.log)")
    if args.check_imports:
        bad = check_imports(out, modules)
        print("imports: " + ("every module is the extension" if not bad else "; ".join(bad)))
        if bad:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
