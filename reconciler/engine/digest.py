"""The plan digest: what a connection test result is valid for.

A test result stays valid while the spec (minus the fields that do not change what is
tested: ``selected``, ``refreshInterval``, ``priority``, ``failbackDelay``), the versions
of the secrets it used and the version of its OAuth 2.0 provider stay the same.  The
digest hashes exactly those (the spec as canonical JSON: sorted keys, no whitespace,
defaults filled in by the model so that writing a default explicitly is not a change).
Secret versions are already keyed hashes (``reconciler.secret.keyed_version``), so the
digest holds no secret material.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

try:  # the digest's JSON, 10x faster than json's (every pass of every resource digests)
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson comes with every extra that runs the engine
    _orjson = None  # type: ignore[assignment]

# Spec fields that do not change what a connection test does: a change to them alone
# needs no new test (toggling ``selected`` for a failover must not re-test the relay).
UNTESTED_FIELDS = frozenset({"selected", "refreshInterval", "priority", "failbackDelay"})


def tested_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a spec (wire form) a connection test depends on."""
    return {k: v for k, v in spec.items() if k not in UNTESTED_FIELDS}


# Built once: ``json.dumps`` with arguments builds an encoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(data: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, non-ASCII characters as they are."""
    return _ENCODER.encode(data)


def canonical_bytes(data: Any) -> bytes:
    """``canonical(data).encode()``, byte for byte, written by orjson when it can.

    For the JSON of a validated spec (what the digest hashes) orjson writes exactly what
    ``json`` writes: sorted keys (orjson sorts by UTF-8 bytes, which is code point order,
    as Python sorts), the same escapes (``\\"``, ``\\\\``, ``\\n``, ``\\u001f``, ...; no
    escaping of non-ASCII), the shortest round-tripping float (``repr``).  It differs only
    where it refuses (a non-string key, an integer beyond 64 bits, a lone surrogate:
    TypeError, so ``json`` writes it here, or raises as it did) and for a non-finite float
    (``json`` writes ``NaN``, orjson ``null``), which a validated spec cannot hold: its one
    float, ``connectionTest.timeoutSeconds``, is bounded (1 to 600).  ``tests/
    test_engine_digest.py`` checks the equality on generated resources and JSON, so the
    digests stored by earlier versions stay valid (an unchanged re-apply tests nothing).
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(data, option=_orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
    return canonical(data).encode()


def plan_digest(spec: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    """``sha256:`` + hex of the canonical spec and the sorted secret/provider versions.

    ``spec``: a validated spec's JSON (a model's ``model_dump(mode="json")``); see
    :func:`canonical_bytes` for why that matters."""
    h = hashlib.sha256()
    h.update(canonical_bytes(spec))
    h.update(b"\0")
    h.update(canonical_bytes(dict(sorted(versions.items()))))
    return "sha256:" + h.hexdigest()[:32]
