"""``/healthz`` and ``/readyz`` (kubelet probes) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from reconciler.runtimes.metrics import OperatorMetrics
from reconciler.runtimes.operator.settings import OperatorConfig

log = logging.getLogger("smtpctl.operator")


@dataclass
class Readiness:
    """What ``/readyz`` answers: ready while connected (or a healthy standby)."""

    ready: bool = False


async def serve(config: OperatorConfig, metrics: OperatorMetrics,
                state: Readiness) -> list[web.AppRunner]:
    async def healthz(_req: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_req: web.Request) -> web.Response:
        ok = state.ready
        return web.Response(text="ready" if ok else "not ready", status=200 if ok else 503)

    async def metrics_view(_req: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    runners = []
    for port, routes in ((config.health_port, [web.get("/healthz", healthz),
                                               web.get("/readyz", readyz)]),
                         (config.metrics_port, [web.get("/metrics", metrics_view)])):
        if port < 0:
            continue
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.health_host, port)
        await site.start()
        addresses = runner.addresses
        bound = addresses[0][1] if addresses else port
        log.info("listening", extra={"port": bound, "paths": [r.path for r in routes]})
        runners.append(runner)
    return runners
