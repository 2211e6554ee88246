"""Finding, loading and compiling the JSON Schemas (the single source of truth).

The authored files live in the repository's ``schemas/`` directory.  The package carries a
byte-identical copy in ``reconciler/schemas/`` (package data, so a wheel install works as
well as the editable install ``./dev`` uses); ``python -m reconciler.schema.crdgen``
refreshes the copy and ``tests/test_schema_files.py`` fails when the two differ.  Loading
always reads the package copy: one location, whatever the install mode.

Validators are compiled once per process with ``jsonschema_rs`` (Rust): compiling costs
about a millisecond, validating a manifest a few microseconds.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

import jsonschema_rs

API_GROUP = "smtp.reconciler.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND_SMTP = "ExternalSmtp"
KIND_OAUTH2 = "OAuth2Provider"
KINDS = (KIND_SMTP, KIND_OAUTH2)
SCHEMA_FILES = {
    KIND_SMTP: "externalsmtp.v1alpha1.json",
    KIND_OAUTH2: "oauth2provider.v1alpha1.json",
}

_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "schemas")


def __getattr__(name: str) -> Path:
    """``PACKAGE_SCHEMA_DIR`` (``reconciler/schemas/``: the copy shipped inside the package)
    and ``SOURCE_SCHEMA_DIR`` (the repository's ``schemas/``: exists in a checkout, not in
    an installed wheel), as ``pathlib.Path``, created on first use: ``smtpctl validate``
    does not import pathlib (start-up time)."""
    from pathlib import Path

    if name == "PACKAGE_SCHEMA_DIR":
        return Path(_PACKAGE_DIR).resolve()
    if name == "SOURCE_SCHEMA_DIR":
        return Path(__file__).resolve().parents[2] / "schemas"
    raise AttributeError(name)


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The parsed JSON Schema of ``kind`` (cached; do not mutate)."""
    with open(os.path.join(_PACKAGE_DIR, SCHEMA_FILES[kind]), encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@cache
def validator(kind: str) -> Any:
    """A compiled jsonschema_rs validator for ``kind``.

    Formats are not asserted (2020-12 treats ``format`` as an annotation); every rule the
    schemas enforce is written as a keyword that both jsonschema_rs and the Python
    ``jsonschema`` reference implementation evaluate identically.
    """
    return jsonschema_rs.Draft202012Validator(load_schema(kind), validate_formats=False)


def subschema(kind: str, schema_path: list[str | int] | tuple[str | int, ...]) -> list[Any]:
    """The chain of schema nodes along an absolute ``schema_path`` (root first)."""
    node: Any = load_schema(kind)
    chain = [node]
    for part in schema_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        chain.append(node)
    return chain
