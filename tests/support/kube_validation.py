"""What the API server checks on every object before admission, besides a CRD's schema.

Written from ``k8s.io/apimachinery/pkg/util/validation`` (DNS-1123 / DNS-1035 names, label
keys and values), ``k8s.io/apimachinery/pkg/api/validation/objectmeta.go``
(``ValidateObjectMetaAccessor``: name per kind, ``generateName`` as a prefix, namespace,
labels, annotations and their 256 KiB budget, finalizers, ownerReferences) and the
built-in kinds' validation in ``k8s.io/kubernetes/pkg/apis/core/validation`` for the kinds
the emulator serves:

* the name rule of each kind: DNS-1123 subdomain (most kinds, custom resources), DNS-1123
  label (Namespace), DNS-1035 label (Service), a path segment (RBAC kinds); core/v1 Events
  keep their legacy rules (no name check; ``involvedObject.namespace`` must match);
* the JSON decoding of the built-in kinds' fields we use, as Go's decoder does it:
  Secret ``data`` values must be base64 (``illegal base64 data at input byte N``), ``int32``
  and string fields must have their types, Lease times are ``MicroTime`` (exactly six
  fractional digits), Event/condition times RFC 3339 -> 400 ``cannot be handled as a``;
* Secret and ConfigMap keys (``[-._a-zA-Z0-9]+``), the 1 MiB size limit, the immutable
  ``type`` of a Secret, ``immutable: true`` Secrets and ConfigMaps.

Names are echoed in messages as the server does (they are not secrets); values of Secret
data never are.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

Cause = dict[str, str]
Obj = dict[str, Any]

_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = _LABEL + r"(\." + _LABEL + ")*"
_DNS1035 = "[a-z]([-a-z0-9]*[a-z0-9])?"
_KEY_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_RE = re.compile(f"^{_LABEL}$")
_SUBDOMAIN_RE = re.compile(f"^{_SUBDOMAIN}$")
_DNS1035_RE = re.compile(f"^{_DNS1035}$")
_KEY_NAME_RE = re.compile(f"^{_KEY_NAME}$")
_VALUE_RE = re.compile(f"^({_KEY_NAME})?$")
_CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
ANNOTATIONS_LIMIT = 256 * 1024
DATA_LIMIT = 1024 * 1024
STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion"}


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    """``RegexError``."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = [_max_len(253)] if len(value) > 253 else []
    if not _SUBDOMAIN_RE.match(value):
        errs.append(_regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character",
            _SUBDOMAIN, "example.com"))
    return errs


def is_dns1123_label(value: str) -> list[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _LABEL_RE.match(value):
        if _SUBDOMAIN_RE.match(value):
            errs.append("must not contain dots")
        else:
            errs.append(_regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character",
                _LABEL, "my-name", "123-abc"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1035_RE.match(value):
        errs.append(_regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character",
            _DNS1035, "my-name", "abc-123"))
    return errs


def is_path_segment_name(value: str) -> list[str]:
    """``path.IsValidPathSegmentName`` (RBAC names)."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


def is_qualified_name(value: str) -> list[str]:
    """``IsQualifiedName`` / ``IsLabelKey``: an optional DNS subdomain prefix and a name."""
    key_msg = ("must consist of alphanumeric characters, '-', '_' or '.', and must start "
               "and end with an alphanumeric character")
    parts = value.split("/")
    if len(parts) > 2:
        return ["a valid label key " + _regex_error(key_msg, _KEY_NAME, "MyName", "my.name",
                                                    "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    errs: list[str] = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += ["prefix part " + m for m in is_dns1123_subdomain(prefix)]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len(63))
    if not _KEY_NAME_RE.match(name):
        errs.append("name part " + _regex_error(key_msg, _KEY_NAME, "MyName", "my.name",
                                                "123-abc"))
    return errs


def is_label_value(value: str) -> list[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _VALUE_RE.match(value):
        errs.append(_regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character",
            f"({_KEY_NAME})?", "MyValue", "my_value", "12345"))
    return errs


NameRule = Callable[[str], list[str]]


def name_rule(group: str, kind: str) -> NameRule | None:
    """The name validation of a kind (None: core/v1 Events, legacy, unchecked)."""
    if (group, kind) == ("", "Event"):
        return None
    if (group, kind) == ("", "Namespace"):
        return is_dns1123_label
    if (group, kind) == ("", "Service"):
        return is_dns1035_label
    if group == "rbac.authorization.k8s.io":
        return is_path_segment_name
    return is_dns1123_subdomain


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def invalid(field: str, value: Any, detail: str) -> Cause:
    return {"reason": "FieldValueInvalid", "field": field,
            "message": f"{field}: Invalid value: {_show(value)}: {detail}"}


def required(field: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "field": field,
            "message": f"{field}: Required value" + (f": {detail}" if detail else "")}


def forbidden(field: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "field": field,
            "message": f"{field}: Forbidden: {detail}"}


def too_long(field: str, limit: int, unit: str = "bytes") -> Cause:
    return {"reason": "FieldValueTooLong", "field": field,
            "message": f"{field}: Too long: may not be more than {limit} {unit}"}


def _mask_trailing_dash(name: str) -> str:
    """``maskTrailingDash``: a generateName may end in '-'."""
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


def validate_metadata(group: str, kind: str, namespaced: bool, obj: Mapping[str, Any],
                      kube_finalizers: bool = True) -> list[Cause]:
    """``ValidateObjectMetaAccessor`` with the kind's name rule (a created object);
    ``kube_finalizers``: see :func:`validate_common`."""
    meta = obj.get("metadata") or {}
    causes: list[Cause] = []
    rule = name_rule(group, kind)
    if rule is None:
        return causes + _legacy_event(obj)
    generate = meta.get("generateName")
    if generate:
        causes += [invalid("metadata.generateName", generate, m)
                   for m in rule(_mask_trailing_dash(str(generate)))]
    name = meta.get("name")
    if not name:
        causes.append(required("metadata.name", "name or generateName is required"))
    else:
        causes += [invalid("metadata.name", name, m) for m in rule(str(name))]
    if namespaced:
        ns = meta.get("namespace")
        if not ns:
            causes.append(required("metadata.namespace"))
        else:
            causes += [invalid("metadata.namespace", ns, m) for m in is_dns1123_label(str(ns))]
    return causes + validate_common(meta, kube_finalizers)


def uses_kube_finalizer_rule(group: str, custom: bool) -> bool:
    """Whether a finalizer must be fully qualified (contain a ``/``) unless standard: the
    built-in kinds validate their metadata with ``pkg/apis/core/validation``, which adds
    ``validateKubeFinalizerName`` as an error; CustomResourceDefinitions use apimachinery's
    generic ``ValidateObjectMeta`` (their own ``customresourcecleanup.apiextensions.k8s.io``
    has no ``/``), and custom resources only get a warning (:func:`finalizer_warnings`)."""
    return not custom and group != "apiextensions.k8s.io"


def finalizer_warnings(meta: Mapping[str, Any],
                       old: Mapping[str, Any] | None = None) -> list[str]:
    """apiextensions-apiserver's warnings for a custom resource's finalizers that are
    neither standard nor fully qualified (on create, and for those an update adds)."""
    before = set((old or {}).get("finalizers") or [])
    return [f'metadata.finalizers[{i}]: "{f}": prefer a domain-qualified finalizer name to '
            "avoid accidental conflicts with other finalizer writers"
            for i, f in enumerate(meta.get("finalizers") or [])
            if "/" not in str(f) and f not in STANDARD_FINALIZERS and f not in before]


def validate_common(meta: Mapping[str, Any], kube_finalizers: bool = True) -> list[Cause]:
    """Labels, annotations, finalizers and ownerReferences (create and update).
    ``kube_finalizers``: a finalizer must also be fully qualified unless standard
    (:func:`uses_kube_finalizer_rule`)."""
    causes: list[Cause] = []
    for k, v in (meta.get("labels") or {}).items():
        causes += [invalid("metadata.labels", k, m) for m in is_qualified_name(str(k))]
        causes += [invalid("metadata.labels", v, m) for m in is_label_value(str(v))]
    annotations = meta.get("annotations") or {}
    for k in annotations:
        causes += [invalid("metadata.annotations", k, m)
                   for m in is_qualified_name(str(k).lower())]
    if sum(len(str(k)) + len(str(v)) for k, v in annotations.items()) > ANNOTATIONS_LIMIT:
        causes.append(too_long("metadata.annotations", ANNOTATIONS_LIMIT))
    for f in meta.get("finalizers") or []:
        msgs = is_qualified_name(str(f))
        causes += [invalid("metadata.finalizers", f, m) for m in msgs]
        if kube_finalizers and not msgs and "/" not in str(f) \
                and f not in STANDARD_FINALIZERS:
            causes.append(invalid("metadata.finalizers", f, "name is neither a standard "
                                  "finalizer name nor is it fully qualified"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        at = f"metadata.ownerReferences[{i}]"
        for field in ("apiVersion", "kind", "name", "uid"):
            if not (ref or {}).get(field):
                causes.append(required(f"{at}.{field}", "must not be empty"))
    return causes


def _legacy_event(obj: Mapping[str, Any]) -> list[Cause]:
    """``legacyValidateEvent`` for core/v1 Events."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace") or "")
    involved = obj.get("involvedObject") or {}
    inv_ns = str(involved.get("namespace") or "")
    causes: list[Cause] = []
    if not obj.get("eventTime"):
        if (not inv_ns and ns not in ("", "default")) or (inv_ns and ns != inv_ns):
            causes.append(invalid("involvedObject.namespace", inv_ns,
                                  "does not match event.namespace"))
    else:
        if not inv_ns and ns not in ("default", "kube-system"):
            causes.append(invalid("involvedObject.namespace", inv_ns,
                                  "does not match event.namespace"))
        if not obj.get("reportingComponent"):
            causes.append(required("reportingComponent"))
        if not obj.get("reportingInstance"):
            causes.append(required("reportingInstance"))
        if not obj.get("action"):
            causes.append(required("action"))
        if not obj.get("reason"):
            causes.append(required("reason"))
    causes += [invalid("namespace", ns, m) for m in is_dns1123_subdomain(ns)]
    return causes


# --- decoding the built-in kinds ------------------------------------------------------


class DecodeError(ValueError):
    """A body Go's JSON decoder refuses: 400 ``cannot be handled as a <Kind>``."""


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_MICRO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_JSON_TYPE = {bool: "bool", int: "number", float: "number", str: "string", list: "array",
              dict: "object", type(None): "null"}


def _json_type(v: Any) -> str:
    return _JSON_TYPE.get(type(v), "value")


def _check(value: Any, spec: Any, struct: str, path: str) -> None:
    """``value`` against ``spec`` ("string", "int32", "int64", "bool", "time",
    "microtime", "bytes", {"field": spec}, ["spec"], ("map", spec))."""
    if value is None:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct "
                              f"field {struct}.{path} of type {struct}")
        for k, sub in spec.items():
            if k in value:
                _check(value[k], sub, struct, f"{path}.{k}" if path else k)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct "
                              f"field {struct}.{path} of type []{spec[0]}")
        for item in value:
            _check(item, spec[0], struct, path)
        return
    if isinstance(spec, tuple):  # ("map", elem)
        if not isinstance(value, dict):
            raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct "
                              f"field {struct}.{path} of type map[string]{spec[1]}")
        for item in value.values():
            _check(item, spec[1], struct, path)
        return
    go = {"int32": "int32", "int64": "int64", "string": "string", "bool": "bool",
          "time": "v1.Time", "microtime": "v1.MicroTime", "bytes": "[]uint8"}[spec]
    ok = {"string": isinstance(value, str), "bool": isinstance(value, bool),
          "int32": isinstance(value, int) and not isinstance(value, bool)
          and -2**31 <= value < 2**31,
          "int64": isinstance(value, int) and not isinstance(value, bool),
          "time": isinstance(value, str), "microtime": isinstance(value, str),
          "bytes": isinstance(value, str)}[spec]
    if not ok:
        raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                          f"{struct}.{path} of type {go}")
    if spec == "time" and not _RFC3339.match(value):
        raise DecodeError(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot '
                          f"parse as RFC 3339")
    if spec == "microtime" and not _MICRO.match(value):
        raise DecodeError(f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": '
                          f"cannot parse as RFC 3339 with microseconds")
    if spec == "bytes":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError(f"illegal base64 data at input byte {_bad_byte(value)}") from None


def _bad_byte(text: str) -> int:
    for i, ch in enumerate(text):
        if not (ch.isascii() and (ch.isalnum() or ch in "+/=")):
            return i
    return max(0, len(text) - len(text) % 4)


_OWNER = {"apiVersion": "string", "kind": "string", "name": "string", "uid": "string",
          "controller": "bool", "blockOwnerDeletion": "bool"}
_META = {"name": "string", "generateName": "string", "namespace": "string", "uid": "string",
         "resourceVersion": "string", "generation": "int64", "creationTimestamp": "time",
         "deletionTimestamp": "time", "deletionGracePeriodSeconds": "int64",
         "labels": ("map", "string"), "annotations": ("map", "string"),
         "finalizers": ["string"], "ownerReferences": [_OWNER]}
_REF = {"apiVersion": "string", "kind": "string", "name": "string", "namespace": "string",
        "uid": "string", "resourceVersion": "string", "fieldPath": "string"}
DECODE: dict[tuple[str, str], tuple[str, Obj]] = {
    ("", "Secret"): ("Secret", {"data": ("map", "bytes"), "stringData": ("map", "string"),
                               "type": "string", "immutable": "bool"}),
    ("", "ConfigMap"): ("ConfigMap", {"data": ("map", "string"),
                                      "binaryData": ("map", "bytes"), "immutable": "bool"}),
    ("coordination.k8s.io", "Lease"): ("Lease", {"spec": {
        "holderIdentity": "string", "leaseDurationSeconds": "int32", "acquireTime": "microtime",
        "renewTime": "microtime", "leaseTransitions": "int32", "strategy": "string",
        "preferredHolder": "string"}}),
    ("", "Event"): ("Event", {"involvedObject": _REF, "reason": "string", "message": "string",
                             "type": "string", "count": "int32", "firstTimestamp": "time",
                             "lastTimestamp": "time", "eventTime": "microtime",
                             "source": {"component": "string", "host": "string"},
                             "series": {"count": "int32", "lastObservedTime": "microtime"},
                             "related": _REF,
                             "reportingComponent": "string", "reportingInstance": "string",
                             "action": "string"}),
    ("events.k8s.io", "Event"): ("Event", {"regarding": _REF, "related": _REF,
                                          "reason": "string", "note": "string",
                                          "type": "string", "eventTime": "microtime",
                                          "series": {"count": "int32",
                                                     "lastObservedTime": "microtime"},
                                          "reportingController": "string",
                                          "reportingInstance": "string", "action": "string",
                                          "deprecatedSource": {"component": "string",
                                                               "host": "string"},
                                          "deprecatedFirstTimestamp": "time",
                                          "deprecatedLastTimestamp": "time",
                                          "deprecatedCount": "int32"}),
    ("", "Namespace"): ("Namespace", {"spec": {"finalizers": ["string"]}, "status": {
        "phase": "string", "conditions": [{"type": "string", "status": "string",
                                           "lastTransitionTime": "time", "reason": "string",
                                           "message": "string"}]}}),
}
# Kinds whose whole Go type DECODE declares: their unknown fields are known to be unknown
# (strict decoding errors, Warning headers, dropped), as the API server's decoder finds.
CLOSED = frozenset({("", "Secret"), ("", "ConfigMap"), ("coordination.k8s.io", "Lease"),
                    ("", "Event"), ("events.k8s.io", "Event"), ("", "Namespace")})
_MANAGED = {"manager": "string", "operation": "string", "apiVersion": "string",
            "time": "time", "fieldsType": "string", "fieldsV1": "any", "subresource": "string"}
_META_TYPE = {**_META, "selfLink": "string", "managedFields": [_MANAGED]}


def split_unknown(group: str, kind: str, obj: Obj) -> tuple[Obj, list[str]]:
    """``obj`` without the fields its Go type does not have, and their paths (as the
    strict decoder names them: ``spec.holderIdentty``, ``items[0].x``); nothing for a kind
    not in CLOSED."""
    if (group, kind) not in CLOSED:
        return obj, []
    spec = {"apiVersion": "string", "kind": "string", "metadata": _META_TYPE,
            **DECODE[(group, kind)][1]}
    unknown: list[str] = []
    kept = _known(obj, spec, "", unknown)
    return kept, unknown


def _known(value: Any, spec: Any, path: str, unknown: list[str]) -> Any:
    if isinstance(spec, dict) and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            child = f"{path}.{k}" if path else k
            if k in spec:
                out[k] = _known(v, spec[k], child, unknown)
            else:
                unknown.append(child)
        return out
    if isinstance(spec, list) and isinstance(value, list):
        return [_known(v, spec[0], f"{path}[{i}]", unknown) for i, v in enumerate(value)]
    return value


def decode(group: str, kind: str, obj: Mapping[str, Any]) -> None:
    """Raise :class:`DecodeError` where Go's decoder would refuse the body."""
    struct, spec = DECODE.get((group, kind), (kind, {}))
    _check(obj.get("metadata"), _META, "ObjectMeta", "metadata")
    _check(dict(obj), spec, struct, "")


def validate_builtin(group: str, kind: str, obj: Mapping[str, Any],
                     old: Mapping[str, Any] | None) -> list[Cause]:
    """The kind's own validation (``ValidateSecret``, ``ValidateConfigMap`` and their
    updates) for the built-in kinds we serve."""
    causes: list[Cause] = []
    if (group, kind) in (("", "Secret"), ("", "ConfigMap")):
        total = 0
        for field in ("data", "binaryData"):
            for k, v in (obj.get(field) or {}).items():
                if not _CONFIG_KEY_RE.match(k) or len(k) > 253:
                    causes.append(invalid(f"{field}[{k}]", k, _regex_error(
                        "a valid config key must consist of alphanumeric characters, '-', "
                        "'_' or '.'", "[-._a-zA-Z0-9]+", "key.name", "KEY_NAME", "key-name")))
                total += len(base64.b64decode(v)) if (field == "data" and kind == "Secret") \
                    or field == "binaryData" else len(str(v).encode())
        if total > DATA_LIMIT:
            causes.append(too_long("data", DATA_LIMIT))
        if old is not None:
            if kind == "Secret" and obj.get("type") != old.get("type"):
                causes.append(invalid("type", obj.get("type"), "field is immutable"))
            if old.get("immutable"):
                for field in ("data", "binaryData"):
                    if obj.get(field) != old.get(field):
                        causes.append(forbidden(field, "field is immutable when `immutable` "
                                                       "is set"))
                if not obj.get("immutable"):
                    causes.append(forbidden("immutable", "field is immutable when `immutable` "
                                                         "is set"))
    return causes


def generated_name(prefix: str, random: Callable[[int], str]) -> str:
    """``SimpleNameGenerator.GenerateName``: at most 58 characters of the prefix and 5
    random ones from "bcdfghjklmnpqrstvwxz2456789"."""
    return prefix[:58] + random(5)
