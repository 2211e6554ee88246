"""Authentication and RBAC as a kube-apiserver does them, for the emulator's strict mode.

* Request info (``apiserver/pkg/endpoints/request/requestinfo.go``): the verb (``get``,
  ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``, ``deletecollection``),
  API group, resource, subresource, namespace and name of a request path.
* Authentication: bearer tokens (the scheme matched case-insensitively, as
  ``apiserver/pkg/authentication/request/bearertoken`` does), ServiceAccount tokens
  issued by the emulator (``system:serviceaccount:NS:NAME`` in the groups
  ``system:serviceaccounts``, ``system:serviceaccounts:NS``), and client certificates
  (user = subject CN, groups = subject O, as ``x509.CommonNameUserConversion``).  Every
  authenticated user is in ``system:authenticated``; a request without credentials is
  ``system:anonymous``, and anonymous requests are refused (401) except for
  ``/version``, ``/healthz``, ``/livez``, ``/readyz`` (``system:public-info-viewer``).
* Authorization (``plugin/pkg/auth/authorizer/rbac``): the union of the rules of every
  ClusterRoleBinding and of every RoleBinding in the request's namespace whose subjects
  match the user; ``system:masters`` may do anything; discovery and OpenAPI paths are
  readable by every authenticated user (``system:discovery`` / ``system:basic-user``);
  SelfSubjectAccessReview / SelfSubjectReview creation is allowed to every authenticated
  user.  The 403 message is the real one (``forbidden`` in
  ``apiserver/pkg/endpoints/handlers/responsewriters/errors.go``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def all_groups(self) -> tuple[str, ...]:
        if self.name == "system:anonymous":
            return (*self.groups, "system:unauthenticated")
        return (*self.groups, "system:authenticated")


ANONYMOUS = User("system:anonymous")


@dataclass
class RequestInfo:
    resource_request: bool
    path: str
    verb: str
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


_SPECIAL_VERBS = {"proxy", "watch"}


def query_bool(value: str | None) -> bool:
    """A boolean query parameter (``watch``, ``allowWatchBookmarks``, ``sendInitialEvents``,
    ``force``) as apimachinery's ``runtime.Convert_Slice_string_To_bool`` reads its first
    value: absent, ``0`` or ``false`` in any case is false; anything else, the empty string
    included, is true (not Go's ``strconv.ParseBool``: ``watch=yes`` is a watch, and no
    value is refused)."""
    return value is not None and value != "0" and value.lower() != "false"


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """``RequestInfoFactory.NewRequestInfo``."""
    parts = [p for p in path.strip("/").split("/") if p]
    non_resource = RequestInfo(False, path, method.lower())
    if not parts or parts[0] not in ("api", "apis"):
        return non_resource
    if parts[0] == "api":
        if len(parts) < 2:
            return non_resource
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 3:
            return non_resource
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return non_resource
    info = RequestInfo(True, path, "", api_group=group, api_version=version)
    if rest[0] == "watch":  # deprecated /watch/ paths
        rest = rest[1:]
        info.verb = "watch"
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        info.namespace = rest[1]
        rest = rest[2:]
    elif rest[0] == "namespaces" and len(rest) == 2:
        info.namespace = rest[1]
    info.resource = rest[0]
    if len(rest) >= 2:
        info.name = rest[1]
    if len(rest) >= 3:
        info.subresource = rest[2]
    if info.verb != "watch":
        m = method.upper()
        if m in ("GET", "HEAD"):  # only a collection GET is a list or a watch
            info.verb = "get" if info.name else (
                "watch" if query_bool(query.get("watch")) else "list")
        else:
            info.verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                         "DELETE": "delete" if info.name else "deletecollection"}.get(m, m.lower())
    if info.verb in ("list", "watch") and not info.name:
        selector = str(query.get("fieldSelector", ""))
        if selector.startswith("metadata.name=") and "," not in selector:
            info.name = selector.split("=", 1)[1].lstrip("=")
    return info


# --- authentication --------------------------------------------------------------------


@dataclass
class Authenticator:
    """Static tokens and ServiceAccount tokens; client certificates are read by the caller
    (the TLS layer) and passed in as the subject."""

    tokens: dict[str, User] = field(default_factory=dict)

    def add_token(self, user: User, token: str | None = None) -> str:
        token = token or secrets.token_urlsafe(32)
        self.tokens[token] = user
        return token

    def issue_service_account_token(self, namespace: str, name: str) -> str:
        """A new token for ``namespace/name`` (earlier ones stay valid until revoked, like
        bound tokens the kubelet rotates before they expire)."""
        user = User(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"))
        return self.add_token(user)

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def revoke_service_account(self, namespace: str, name: str) -> None:
        """Every token of the ServiceAccount stops working (it was deleted, or expired)."""
        who = f"system:serviceaccount:{namespace}:{name}"
        for token in [t for t, u in self.tokens.items() if u.name == who]:
            del self.tokens[token]

    def authenticate(self, authorization: str | None, cert_subject: Mapping[str, Any] | None
                     ) -> User | None:
        """The user, ANONYMOUS without credentials, None for bad credentials (401)."""
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self.tokens.get(token.strip())
        if cert_subject:
            return User(str(cert_subject.get("CN", "")), tuple(cert_subject.get("O", ())))
        return ANONYMOUS


def cert_subject(peercert: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``ssl.getpeercert()`` -> {"CN": name, "O": [groups]}."""
    if not peercert:
        return None
    out: dict[str, Any] = {"CN": "", "O": []}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                out["CN"] = value
            elif key == "organizationName":
                out["O"].append(value)
    return out


# --- authorization -----------------------------------------------------------------------

_PUBLIC = ("/version", "/healthz", "/livez", "/readyz")
_DISCOVERY = ("/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz")
_SELF_REVIEWS = {("authorization.k8s.io", "selfsubjectaccessreviews"),
                 ("authorization.k8s.io", "selfsubjectrulesreviews"),
                 ("authentication.k8s.io", "selfsubjectreviews")}


def _subject_matches(subject: Mapping[str, Any], user: User, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.all_groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def _rule_allows(rule: Mapping[str, Any], info: RequestInfo) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and info.verb not in verbs:
        return False
    if not info.resource_request:
        urls = rule.get("nonResourceURLs") or []
        return any(u == "*" or u == info.path or (u.endswith("*") and info.path.startswith(u[:-1]))
                   for u in urls)
    groups = rule.get("apiGroups") or []
    if "*" not in groups and info.api_group not in groups:
        return False
    wanted = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    resources = rule.get("resources") or []
    if not any(r in ("*", wanted) or (info.subresource and r == f"*/{info.subresource}")
               for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or info.name in names


def _aggregated_rules(role: Obj, cluster_roles: Iterable[Obj]) -> list[Obj]:
    rules = list(role.get("rules") or [])
    agg = role.get("aggregationRule")
    if agg:
        from tests.support.kube_selectors import parse_label_selector

        for selector in agg.get("clusterRoleSelectors") or []:
            expr = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
            match = parse_label_selector(expr)
            for other in cluster_roles:
                if other is not role and match(other["metadata"].get("labels") or {}):
                    rules += other.get("rules") or []
    return rules


Lookup = Callable[[str, str, str], list[Obj]]  # (plural, namespace or "", name or "") -> objs


def authorize(user: User, info: RequestInfo, lookup: Lookup) -> bool:
    """RBAC: is ``user`` allowed ``info``?  ``lookup(plural, ns, name)`` reads RBAC objects
    (name "" lists; ns "" is cluster scope)."""
    if "system:masters" in user.all_groups:
        return True
    if not info.resource_request:
        if info.path.rstrip("/") in _PUBLIC or info.path.rstrip("/") == "":
            return True
        if user.name != "system:anonymous" and info.path.startswith(_DISCOVERY) \
                and info.verb in ("get", "head"):
            return True
    elif user.name != "system:anonymous" and info.verb == "create" and \
            (info.api_group, info.resource) in _SELF_REVIEWS:
        return True
    cluster_roles = lookup("clusterroles", "", "")
    by_name = {r["metadata"]["name"]: r for r in cluster_roles}
    bindings = [(b, "") for b in lookup("clusterrolebindings", "", "")]
    if info.namespace:
        bindings += [(b, info.namespace) for b in lookup("rolebindings", info.namespace, "")]
    for binding, ns in bindings:
        if not any(_subject_matches(s, user, ns) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            role = by_name.get(ref.get("name", ""))
        elif ns:
            found = lookup("roles", ns, ref.get("name", ""))
            role = found[0] if found else None
        else:
            role = None
        if role is None:
            continue
        if any(_rule_allows(rule, info) for rule in _aggregated_rules(role, cluster_roles)):
            return True
    return False


def forbidden_message(user: User, info: RequestInfo) -> str:
    """``responsewriters.forbiddenMessage``."""
    if not info.resource_request:
        return (f'forbidden: User "{user.name}" cannot {info.verb} path "{info.path}"')
    resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    scope = (f'in the namespace "{info.namespace}"' if info.namespace
             else "at the cluster scope")
    prefix = f'{resource} "{info.name}" is forbidden' if info.name else \
        f"{resource} is forbidden"
    return (f'{prefix}: User "{user.name}" cannot {info.verb} resource "{resource}" in API group '
            f'"{info.api_group}" {scope}')
