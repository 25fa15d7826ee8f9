"""The worker's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``, and nothing else.

Faust's aiohttp web server comes with built-in blueprints: ``/router/...`` (cluster topology and
which worker owns a table *key*), ``/table/...`` (reads table values over HTTP: our tables are
keyed by api_key, so that is a key enumeration leak), ``/`` + ``/assignment/`` (sensor stats),
``/graph`` and ``/performance``. :func:`install_web` removes every one of them before the server
starts, and adds a middleware that refuses any non-read method (POST, PUT, PATCH, DELETE, ...)
unless it carries ``Authorization: Bearer <MOATWATCH_WEB_TOKEN>``; with no token configured no
write request is ever let through. moatwatch itself registers no write endpoint.

The server is part of Faust's boot sequence and starts *before* the consumer joins the group,
so ``/healthz`` and ``/readyz`` answer during partition assignment and table recovery.
Bind it to loopback (the default ``MOATWATCH_WEB_HOST=127.0.0.1``) with :func:`web_app_options`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import faust
from faust import web as faust_web

from streams.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "BUILTIN_BLUEPRINT_PREFIX",
    "READ_METHODS",
    "install_web",
    "readiness",
    "recovery_complete",
    "web_app_options",
]

log = logging.getLogger(__name__)

#: Faust's own blueprints all live in this package; none of them is served.
BUILTIN_BLUEPRINT_PREFIX = "faust.web.apps"
#: Methods that cannot change anything; every other method needs the bearer token.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Ready = Callable[[], tuple[bool, str]]


def web_app_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments for :class:`faust.App` that configure its web server safely.

    Binds ``settings.web_host:settings.web_port`` (Faust's own default binds every interface)
    and switches off every built-in endpoint, so that even an app that never calls
    :func:`install_web` serves none of them.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> opts = web_app_options(SimpleNamespace(web_host="127.0.0.1", web_port=6066))
    >>> opts["web_bind"], opts["web_port"], opts["web_tables_enabled"]
    ('127.0.0.1', 6066, False)
    """
    return {
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_metrics_enabled": False,
    }


def _is_builtin(blueprint: Any) -> bool:
    if isinstance(blueprint, str):
        return blueprint.startswith(BUILTIN_BLUEPRINT_PREFIX)
    return str(getattr(blueprint, "__module__", "")).startswith(BUILTIN_BLUEPRINT_PREFIX) or (
        getattr(blueprint, "name", None)
        in {"router", "table", "tables", "graph", "stats", "production_index", "metrics"}
    )


def _token_guard(token: str) -> Any:
    """aiohttp middleware: non-read methods need ``Authorization: Bearer <token>``."""
    from aiohttp import web as aioweb

    expected = f"Bearer {token}".encode() if token else None

    @aioweb.middleware
    async def guard(request: Any, handler: Any) -> Any:
        if request.method not in READ_METHODS:
            given = request.headers.get("Authorization", "").encode()
            if expected is None:
                return aioweb.Response(
                    status=403,
                    text="write operations are disabled: set MOATWATCH_WEB_TOKEN to enable them\n",
                )
            if not hmac.compare_digest(given, expected):
                return aioweb.Response(
                    status=401,
                    text="missing or wrong bearer token (Authorization: Bearer $MOATWATCH_WEB_TOKEN)\n",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return guard


def install_web(
    app: faust.App,
    *,
    metrics: Metrics,
    ready: Ready,
    token: str = "",
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on the app's web server, and only those.

    Call it while building the app, before the worker starts (Faust applies blueprints once,
    when its web server initialises).

    Parameters
    ----------
    app
        The Faust app (aiohttp web driver, Faust's default).
    metrics
        Served as the Prometheus text exposition at ``/metrics``.
    ready
        ``ready() -> (ok, reason)``; ``/readyz`` answers 200 when ok, else 503 with the reason.
        Usually ``lambda: readiness(app)``.
    token
        Bearer token that non-read requests must carry; empty refuses all of them.

    Raises
    ------
    RuntimeError
        When the web server was already initialised (too late to remove Faust's endpoints).
    """
    server = app.web
    manager = server.blueprints
    if manager.applied:
        raise RuntimeError(
            "install_web() was called after the Faust web server initialised; call it while "
            "building the app, before app.main()/worker start, so Faust's built-in endpoints "
            "(/table, /router, /stats) can still be removed"
        )
    removed = [prefix or "/" for prefix, bp in manager._enabled if _is_builtin(bp)]
    manager._enabled = [(prefix, bp) for prefix, bp in manager._enabled if not _is_builtin(bp)]
    if removed:
        log.debug("removed Faust built-in web endpoints: %s", ", ".join(removed))

    web_app = getattr(server, "web_app", None)
    if web_app is None or not hasattr(web_app, "middlewares"):
        raise RuntimeError(
            f"install_web() needs Faust's aiohttp web driver, got {type(server).__name__}; "
            "leave the app's `web` setting at its default (aiohttp://)"
        )
    web_app.middlewares.append(_token_guard(token))

    class MetricsView(faust_web.View):
        async def get(self, request: faust_web.Request) -> faust_web.Response:
            return self.bytes(metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    class HealthView(faust_web.View):
        async def get(self, request: faust_web.Request) -> faust_web.Response:
            return self.text("ok\n")

    class ReadyView(faust_web.View):
        async def get(self, request: faust_web.Request) -> faust_web.Response:
            try:
                ok, reason = ready()
            except Exception as exc:  # a readiness probe must answer, not 500
                ok, reason = False, f"readiness check failed: {exc!r}"
            return self.text(f"{reason}\n", status=200 if ok else 503)

    for path, view in (("/metrics", MetricsView), ("/healthz", HealthView),
                       ("/readyz", ReadyView)):
        app.page(path, name=f"moatwatch-{path.strip('/')}")(view)


def readiness(app: faust.App) -> tuple[bool, str]:
    """Whether the worker can process events now: ``(True, "ready")`` or ``(False, why)``.

    Ready means: the consumer has partitions assigned, no rebalance is in progress, and table
    recovery from the changelogs has completed for the current assignment.
    """
    consumer = getattr(app, "_consumer", None)
    if consumer is None:
        return False, "consumer not started yet"
    if getattr(app, "rebalancing", False):
        return False, "consumer group rebalance in progress"
    try:
        assignment = consumer.assignment()
    except Exception as exc:
        return False, f"cannot read the consumer assignment: {exc!r}"
    tables = app.tables
    recovery = getattr(tables, "_recovery", None)
    changelogs = set(getattr(tables, "_changelogs", {}) or {})
    sources = {tp for tp in assignment if tp.topic not in changelogs}
    if not sources:
        return False, (
            "no partitions assigned (still joining the consumer group, or more workers "
            "than input partitions)"
        )
    if recovery is None or not recovery.completed.is_set():
        return False, "table recovery from changelogs has not completed"
    if recovery.in_recovery or not getattr(tables, "actives_ready", True):
        remaining = 0
        try:
            remaining = int(recovery.active_remaining_total())
        except Exception:
            pass
        return False, f"table recovery in progress ({remaining} changelog messages remaining)"
    return True, f"ready: {len(sources)} partitions assigned, tables recovered"


def recovery_complete(app: faust.App) -> bool:
    """Whether table recovery has completed for the current assignment (the value of the
    ``moatwatch_table_recovery_complete`` gauge).

    Unlike :func:`readiness` it does not require partitions: a worker that holds none (more
    workers than input partitions) has nothing to recover, and must not look "stuck" to the
    MoatwatchRecoveryStuck alert.
    """
    tables = getattr(app, "tables", None)
    recovery = getattr(tables, "_recovery", None)
    if recovery is None or not recovery.completed.is_set():
        return False
    return not recovery.in_recovery and bool(getattr(tables, "actives_ready", True))
