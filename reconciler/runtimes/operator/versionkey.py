"""The key of the keyed hashes of secret values ("secret versions"), shared by replicas.

Versions must be stable across restarts and replicas, or every restart would look like a
rotation and re-test everything.  The key comes from ``SMTPCTL_VERSION_KEY`` when the
administrator provides one (``OperatorConfig.version_key``); otherwise the leader reads
the Secret ``smtpctl-version-key`` in the operator's namespace and creates it with 32
random bytes the first time (two replicas racing: one create wins with 409 for the
other, which then reads the winner's key).  So no install step has to run before the
pods start.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os

from reconciler.runtimes.operator.watching import Backoff
from reconciler.stores.kubeapi import (
    ApiError,
    Conflict,
    KubeApi,
    NotFound,
    describe_server,
    resource_path,
)

log = logging.getLogger("smtpctl.operator")
SECRET_NAME = "smtpctl-version-key"  # noqa: S105 - a Secret name


async def ensure_version_key(api: KubeApi, namespace: str, name: str = SECRET_NAME) -> bytes:
    """Read the shared key, creating it when missing; retried while the API fails."""
    backoff = Backoff()
    path = resource_path("v1", "secrets", namespace, name)
    while True:
        try:
            try:
                body = await api.get(path)
            except NotFound:
                key = base64.b64encode(os.urandom(32))
                try:
                    await api.post(resource_path("v1", "secrets", namespace), {
                        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": name, "namespace": namespace,
                                     "labels": {"app.kubernetes.io/managed-by":
                                                "smtpctl-operator"}},
                        "data": {"key": base64.b64encode(key).decode()}})
                except Conflict:
                    continue  # another replica created it first: read theirs
                log.info("created the version key", extra={"secret": f"{namespace}/{name}"})
                return key
            raw = (body.get("data") or {}).get("key")
            try:
                key = base64.b64decode(str(raw or ""), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if key:
                return key
            log.error(f"Secret {namespace}/{name} has no usable 'key'; fix or delete it")
            delay = backoff.next()
        except ApiError as exc:
            delay = backoff.next()
            log.warning(f"cannot read the version key {namespace}/{name} on "
                        f"{describe_server(api.creds)}: {exc.code or ''} {exc.reason}; "
                        f"retrying in {delay:.1f}s", extra={"code": exc.code})
        await asyncio.sleep(delay)
