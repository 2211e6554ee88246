"""``smtpctl operator``: run the Kubernetes operator (see reconciler/runtimes/operator/)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from reconciler.cli.common import EXIT_USAGE
from reconciler.cli.opsecurity import add_security_options, security_settings
from reconciler.gctune import GC_THRESHOLD as GC_THRESHOLD  # re-exported (its test)
from reconciler.gctune import tune_gc

HELP = "run the Kubernetes operator (reconcile ExternalSmtp/OAuth2Provider resources)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster when running in a pod, "
                        "then $KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", default=[],
                       metavar="NS", help="reconcile only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="reconcile every namespace (the default without --namespace)")
    parser.add_argument("--selector", "-l", default=None, metavar="LABELS",
                        help="only resources matching this label selector (sharding)")
    parser.add_argument("--publish-secret", default="smtp-active-relay", metavar="NAME",
                        help="name of the Secret with the selected relay per namespace")
    parser.add_argument("--no-leader-election", dest="leader_election", action="store_false",
                        help="do not take a Lease (a single replica only)")
    parser.add_argument("--lease-name", default="smtpctl-operator")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE") or None)
    parser.add_argument("--identity", default=os.environ.get("POD_NAME") or None)
    parser.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    parser.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--renew-period", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--health-host", default="0.0.0.0")  # noqa: S104 - kubelet probes
    parser.add_argument("--health-port", type=int, default=8080,
                        help="/healthz and /readyz (0: any free port, -1: off)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="/metrics (0: any free port, -1: off)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connection tests at once, in total")
    parser.add_argument("--per-host", type=int, default=4,
                        help="connection tests at once against one relay host")
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"),
                        default="auto",
                        help="the operator's event loop: uvloop (libuv; its sockets, TLS "
                        "records and timers in compiled code), asyncio (the standard "
                        "library's); auto (the default): uvloop when it is installed")
    parser.add_argument("--probe-workers", default="auto", metavar="N",
                        help="run connection tests in N worker processes (0: on the "
                        "operator's event loop); auto (the default): one per CPU beyond "
                        "the first that this process may use (affinity and cgroup CPU "
                        "limit), at most 4. OAuth2 relays are always tested in the operator; "
                        "--concurrency and --per-host bound the tests either way")
    parser.add_argument("--no-announce-testing", dest="announce_testing",
                        action="store_false",
                        help="never write Reconciling=True for a test in flight (by "
                        "default: before a test of a same-generation change, and during "
                        "a test running longer than 5 s)")
    parser.add_argument("--allow-loopback", action="store_true",
                        help="allow connection tests to loopback addresses (off in a pod)")
    add_security_options(parser)
    parser.add_argument("--remove-finalizers", action="store_true",
                        help="remove the operator's finalizer from every ExternalSmtp in scope "
                        "and exit (uninstalling when the operator no longer runs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")


def import_operator() -> None:
    """The operator's modules, aiohttp first and without the CA-bundle loads it does at
    import (``reconciler/stores/aiohttpimport.py``: 0.05 s of the start-up)."""
    from reconciler.stores.aiohttpimport import import_aiohttp

    import_aiohttp()
    importlib.import_module("reconciler.runtimes.operator")


def run(args: argparse.Namespace) -> int:
    import_operator()
    from reconciler.runtimes import logjson
    from reconciler.runtimes.operator import OperatorConfig, run_operator

    logjson.setup(logging.DEBUG if args.verbose else logging.INFO)
    # `kill -USR1 PID` dumps every thread's stack to stderr (a hung loop is otherwise opaque).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if args.renew_deadline >= args.lease_duration:
        logging.getLogger("smtpctl.operator").error("--renew-deadline must be shorter than "
                                                    "--lease-duration")
        return EXIT_USAGE
    from reconciler.runtimes.operator.probing import parse_probe_workers

    try:
        workers = parse_probe_workers(args.probe_workers)
    except ValueError as exc:
        logging.getLogger("smtpctl.operator").error(str(exc))
        return EXIT_USAGE
    config = OperatorConfig(
        kubeconfig=args.kubeconfig, context=args.context, namespaces=list(args.namespaces),
        selector=args.selector, publish_secret=args.publish_secret,
        leader_election=args.leader_election, lease_name=args.lease_name,
        lease_namespace=args.lease_namespace, lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline, renew_period=args.renew_period,
        health_host=args.health_host, health_port=args.health_port,
        metrics_port=args.metrics_port, concurrency=args.concurrency, per_host=args.per_host,
        announce_testing=args.announce_testing, allow_loopback=args.allow_loopback,
        probe_workers=workers,
    )
    if args.identity:
        config.identity = args.identity
    if os.environ.get("SMTPCTL_VERSION_KEY"):
        config.version_key = os.environ["SMTPCTL_VERSION_KEY"].encode()
    if args.remove_finalizers:
        from reconciler.runtimes.operator.main import remove_finalizers

        return asyncio.run(remove_finalizers(config))
    try:
        config.source_policy, config.egress = security_settings(args)
    except ValueError as exc:
        logging.getLogger("smtpctl.operator").error(str(exc))
        return EXIT_USAGE
    try:
        loop = new_event_loop(args.event_loop)
    except ImportError:
        logging.getLogger("smtpctl.operator").error(
            "--event-loop uvloop: uvloop is not installed (pip install 'smtpctl[operator]')")
        return EXIT_USAGE
    tune_gc()  # again: what the operator's modules allocated is frozen too
    try:
        return _run(run_operator(config), loop)
    except OSError as exc:
        logging.getLogger("smtpctl.operator").error("cannot start", extra={
            "error": type(exc).__name__})
        return EXIT_USAGE


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """The operator's event loop (``--event-loop``): uvloop's when it is installed (or
    asked for: ImportError without it), else the standard library's.  Only the operator's
    main loop: the Lease thread's loop and the probe workers keep asyncio's."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run(main: Coroutine[Any, Any, int], loop: asyncio.AbstractEventLoop | None = None,
         ) -> int:
    """``asyncio.run`` with a bounded clean-up: a leftover task that does not finish within
    5 s of being cancelled must not keep a stopped operator (e.g. one that lost its Lease)
    from exiting."""
    loop = loop or asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
