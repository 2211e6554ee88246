"""kopf's list+watch streams, dispatched to the controller.

kopf supplies discovery, list+watch with re-list after ``410 Gone``, reconnects and
login, through plain ``@kopf.on.event`` handlers that keep no state and write nothing.
"""

from __future__ import annotations

import ssl
from typing import Any

from reconciler.resources import API_GROUP, KIND_OAUTH2, KIND_SMTP
from reconciler.runtimes.operator.controller import Controller
from reconciler.runtimes.operator.settings import OperatorConfig
from reconciler.stores.kubeapi import ClusterConfig

VERSION = "v1alpha1"


def kopf_login(cluster: ClusterConfig) -> Any:
    import kopf

    auth = cluster.headers.get("Authorization", "")
    token = auth.split(" ", 1)[1] if auth.startswith("Bearer ") else None
    insecure = isinstance(cluster.verify, ssl.SSLContext) and \
        cluster.verify.verify_mode == ssl.CERT_NONE
    return kopf.ConnectionInfo(server=cluster.server, scheme="Bearer" if token else None,
                               token=token, insecure=insecure,
                               default_namespace=cluster.namespace)


def registry(controller: Controller, cluster: ClusterConfig, config: OperatorConfig) -> Any:
    import kopf

    reg = kopf.OperatorRegistry()

    @kopf.on.startup(registry=reg)
    def _configure(settings: Any, **_: Any) -> None:
        settings.posting.enabled = False  # our engine posts the Events that matter
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.error_backoffs = [1, 2, 5]
        if config.selector:
            for plural in ("externalsmtps", "oauth2providers"):
                settings.watching.label_selectors[API_GROUP, plural] = config.selector

    @kopf.on.login(registry=reg)
    def _login(**_: Any) -> Any:
        return kopf_login(cluster)

    @kopf.on.event(API_GROUP, VERSION, "externalsmtps", registry=reg)
    async def _smtp(event: Any, **_: Any) -> None:
        body = event["object"]
        body.setdefault("kind", KIND_SMTP)
        controller.handle(body, event.get("type"))

    @kopf.on.event(API_GROUP, VERSION, "oauth2providers", registry=reg)
    async def _provider(event: Any, **_: Any) -> None:
        body = event["object"]
        body.setdefault("kind", KIND_OAUTH2)
        controller.handle(body, event.get("type"))

    @kopf.on.event("", "v1", "secrets", registry=reg)
    async def _secret(event: Any, **_: Any) -> None:
        controller.handle_secret(event["object"], event.get("type"))

    return reg
