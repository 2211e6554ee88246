"""Strategic merge patch for the built-in kinds the emulator serves.

Modelled on ``k8s.io/apimachinery/pkg/util/strategicpatch`` (``StrategicMergePatch``):
maps merge recursively and ``null`` deletes a key; a list merges only where its Go field
declares ``patchStrategy:"merge"`` (a list of objects by its ``patchMergeKey``, a list of
scalars as a set union), any other list is replaced.  Directives: ``$patch: replace`` and
``$patch: delete`` (in a map or as a list item), ``$retainKeys``,
``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>`` (what kubectl's
client-side apply sends).  The merge keys are those of the Go types we serve
(``PATCH_KEYS``); custom resources never get here (the API server answers 415).

Approximations: ``$setElementOrder`` puts the listed items first in its order and keeps
the others after them in their merged order (upstream interleaves server-only items by
their original positions); a patch item without its merge key is a 400 here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]

_META = {"metadata.finalizers": "", "metadata.ownerReferences": "uid"}
_POD = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "containers.env": "name", "initContainers.env": "name",
    "containers.ports": "containerPort", "initContainers.ports": "containerPort",
    "containers.volumeMounts": "mountPath", "initContainers.volumeMounts": "mountPath",
    "containers.volumeDevices": "devicePath", "initContainers.volumeDevices": "devicePath",
    "volumes": "name", "imagePullSecrets": "name", "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey", "resourceClaims": "name",
    "schedulingGates": "name",
}
_CONDITIONS = {"status.conditions": "type"}
# (group, kind) -> dotted field path (list levels are transparent) -> patchMergeKey, ""
# for a list of scalars merged as a set.  From the Go types' struct tags.
PATCH_KEYS: dict[tuple[str, str], dict[str, str]] = {
    ("apps", "Deployment"): {
        **_META, **_CONDITIONS,
        **{f"spec.template.{k}": v for k, v in _META.items()},
        **{f"spec.template.spec.{k}": v for k, v in _POD.items()},
    },
    ("", "Service"): {**_META, **_CONDITIONS, "spec.ports": "port"},
    ("", "ServiceAccount"): {**_META, "secrets": "name", "imagePullSecrets": "name"},
    ("policy", "PodDisruptionBudget"): {**_META, **_CONDITIONS},
    ("", "Namespace"): {**_META, **_CONDITIONS},
}


class PatchError(ValueError):
    """The patch cannot be applied (the API server answers 400)."""


def strategic_merge_patch(original: Obj, patch: Any, group: str, kind: str) -> Obj:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    keys = PATCH_KEYS.get((group, kind), _META)
    merged = _merge_map(original, patch, keys, "")
    if merged is None:
        raise PatchError("a strategic merge patch may not delete the whole object")
    return merged


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge_map(original: Any, patch: Mapping[str, Any], keys: Mapping[str, str],
               path: str) -> Obj | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _merge_map({}, {k: v for k, v in patch.items() if k != "$patch"}, keys, path)
    if directive is not None:
        raise PatchError(f"unknown patch type: {directive}")
    out: Obj = copy.deepcopy(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("$retainKeys must be a list")
        out = {k: v for k, v in out.items() if k in retain}
    for key, values in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(values, list):
                out[field] = [v for v in out[field] if v not in values]
    orders = {k.split("/", 1)[1]: v for k, v in patch.items()
              if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            out.pop(key, None)
            continue
        field = _child(path, key)
        if isinstance(value, list):
            if field in keys:
                out[key] = _merge_list(out.get(key), value, keys, field)
            else:  # no patch strategy: replaced
                out[key] = _merge_list(None, value, keys, field)
        elif isinstance(value, dict):
            merged = _merge_map(out.get(key), value, keys, field)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = value
    for key, order in orders.items():
        field = _child(path, key)
        if isinstance(out.get(key), list) and isinstance(order, list):
            out[key] = _reorder(out[key], order, keys.get(field, ""))
    return out


def _merge_list(original: Any, patch: list[Any], keys: Mapping[str, str],
                path: str) -> list[Any]:
    merge_key = keys.get(path)
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        original, patch = None, [i for i in patch
                                 if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    current = copy.deepcopy(original) if isinstance(original, list) else []
    if merge_key is None:  # replaced; items lose their directives
        return [_merge_map({}, i, keys, path) if isinstance(i, dict) else i for i in patch]
    if merge_key == "":  # a set of scalars
        return current + [v for i, v in enumerate(patch) if v not in current
                          and v not in patch[:i]]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: "
                             f"{merge_key}")
        at = next((n for n, cur in enumerate(current)
                   if isinstance(cur, dict) and cur.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            current = [c for c in current if not (isinstance(c, dict)
                                                  and c.get(merge_key) == item[merge_key])]
            continue
        merged = _merge_map(current[at] if at is not None else {}, item, keys, path)
        if merged is None:
            continue
        if at is None:
            current.append(merged)
        else:
            current[at] = merged
    return current


def _reorder(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    def ident(v: Any) -> Any:
        return v.get(merge_key) if merge_key and isinstance(v, dict) else v

    wanted = [ident(o) for o in order]
    listed = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    return listed + [i for i in items if ident(i) not in wanted]
