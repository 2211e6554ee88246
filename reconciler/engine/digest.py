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

# Spec fields that do not change what a connection test does: a change to them alone
# needs no new test (toggling ``selected`` for a failover must not re-test the relay).
UNTESTED_FIELDS = frozenset({"selected", "refreshInterval", "priority", "failbackDelay"})


def tested_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a spec (wire form) a connection test depends on."""
    return {k: v for k, v in spec.items() if k not in UNTESTED_FIELDS}


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan_digest(spec: Mapping[str, Any], versions: Mapping[str, str]) -> str:
    """``sha256:`` + hex of the canonical spec and the sorted secret/provider versions."""
    h = hashlib.sha256()
    h.update(canonical(spec).encode())
    h.update(b"\0")
    h.update(canonical(dict(sorted(versions.items()))).encode())
    return "sha256:" + h.hexdigest()[:32]
