"""The serving backend: the FastAPI app that serves the version a registry stage holds.

At start-up it resolves the stage's alias (``@staging`` or ``@production``), loads that
version from the registry and serves it (:mod:`serving.served`). By default it serves that
version until restarted: a later promotion never changes a running server. A *following*
backend (``--follow``, ``MODEL_FOLLOW=true``) watches its alias (:mod:`churnlab.follow`):
it polls it and, with ``CHURNLAB_WEBHOOK_SECRET`` set, acts on MLflow's signed alias
webhooks at ``POST /webhooks/mlflow``; each version the alias names is loaded and proven
ready in the background, then swapped in by replacing ``app.state.served`` (every handler
reads it once per request, so requests in flight finish on the version they started with).
Run it with ``churnlab serve --stage production --port 8001 [--follow]`` (:func:`serve`)
or ``uvicorn serving.app:app`` (configured by the variables in :data:`ENV_VARIABLES`).

The routes: churnlab's own (:mod:`serving.api`: ``GET /health``, ``GET /metadata``,
``POST /predict``, ``POST /webhooks/mlflow``, ``GET /``, a page for people), MLflow's
scoring protocol (:mod:`serving.invocations`: ``POST /invocations``, ``GET /ping``,
``GET /version``) and the OpenAPI docs at ``/docs``. No endpoint changes the registry.
A POST to one of the two scoring routes goes straight to its function (see
:meth:`ServingApp.__call__`); FastAPI routes every other request and documents them all.
"""

from __future__ import annotations

import gc
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp

from churnlab import store
from churnlab.backend import DEFAULT_PORTS, port_free
from churnlab.errors import ChurnlabError, InputError
from serving import _http, api, contract, invocations
from serving._http import INLINE_BODY_BYTES
from serving.api import render
from serving.served import Served, load, start_following
from serving.settings import APP_VARIABLES, ENV_VARIABLES, MLFLOW_AUTH_VARIABLES, Settings

__all__ = [
    "APP_VARIABLES",
    "ENV_VARIABLES",
    "INLINE_BODY_BYTES",
    "MLFLOW_AUTH_VARIABLES",
    "Served",
    "ServingApp",
    "Settings",
    "app",
    "create_app",
    "load",
    "render",
    "serve",
]


class ServingApp(FastAPI):
    """FastAPI with a start-up that loads the served version, failing in one clear line,
    and a direct way in for the scoring routes' POSTs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: path -> the ASGI app a POST to it goes to (:func:`serving._http.direct`)
        self.direct: dict[str, ASGIApp] = {}

    async def __call__(self, scope, receive, send) -> None:
        """A POST to ``/predict`` or ``/invocations`` goes straight to its route's
        function: FastAPI's routing, dependency solving and middleware would cost more
        than scoring one customer, and those routes use none of it. Everything else,
        those paths' other methods included, goes through FastAPI."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            direct = self.direct.get(scope["path"])
            if direct is not None:
                scope["app"] = self
                await direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            if self.state.served is None:
                settings = self.state.settings or Settings.from_env()
                self.state.served = load(settings)
            self.state.contract = contract.Contract(
                self.state.served.settings.max_records, self.state.served.settings.max_body_bytes
            )
            api.document(self, self.state.contract)
            if self.state.served.settings.follow:
                self.state.follower = start_following(self.state)
            # everything loaded so far (MLflow, onnxruntime; scikit-learn when following)
            # lives as long as the process:
            # take it out of the cyclic collector's sight, or now and then a full collection
            # walks all of it and stalls a request. (No gc.collect() first: it would slow
            # start-up and free next to nothing.)
            gc.freeze()
        except ChurnlabError as exc:
            await send(
                {"type": "lifespan.startup.failed", "message": f"serving: {store.redact(str(exc))}"}
            )
            return
        finally:  # `churnlab serve` turned the collector off while it loaded: on again,
            gc.enable()  # for what requests allocate, however the start-up ended
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: stop watching the alias
        if self.state.follower is not None:
            self.state.follower.stop()
        await send({"type": "lifespan.shutdown.complete"})


def create_app(settings: Settings | None = None, served: Served | None = None) -> ServingApp:
    """The FastAPI app; ``served`` skips loading (``churnlab serve`` loads first)."""
    app = ServingApp(
        title="churnlab serving",
        summary="Churn probabilities from the model version a registry stage holds.",
        version="1",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.served = served
    app.state.contract = None
    app.state.follower = None
    api.include(app)  # /health, /metadata, /webhooks/mlflow, /predict, the page
    invocations.include(app)  # MLflow's scoring protocol: /invocations, /ping, /version
    app.mount("/static", StaticFiles(directory=api.STATIC_DIR), name="static")
    app.direct = {
        "/predict": _http.direct(api.predict, debug=app.debug),
        "/invocations": _http.direct(invocations.invocations, debug=app.debug),
    }
    return app


def serve(
    *,
    model_name: str | None = None,
    stage: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_records: int | None = None,
    max_body_bytes: int | None = None,
    follow_alias: bool | None = None,
    poll_interval_s: float | None = None,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Load the stage's version, then serve it with uvicorn until interrupted.

    What ``churnlab serve`` runs. Arguments left None come from the environment
    (:meth:`Settings.from_env`); the port defaults to the stage's usual one. Everything
    that can fail (settings, port, registry, model) fails before uvicorn starts.
    """
    settings = Settings.from_env(
        model_name=model_name,
        stage=stage,
        max_records=max_records,
        max_body_bytes=max_body_bytes,
        follow=follow_alias or None,  # --follow absent: MODEL_FOLLOW decides
        poll_interval_s=poll_interval_s,
    )
    port = port if port is not None else DEFAULT_PORTS[settings.stage]
    if not 0 < port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {port}")
    if not port_free(port, host):
        raise InputError(f"port {port} on {host} is in use; choose another with --port")
    served = load(settings)
    import uvicorn

    following = f"; following @{settings.stage}" if settings.follow else ""
    print(
        f"Serving {settings.model_name} v{served.version} ({settings.stage}{following}) "
        f"on http://{host}:{port}  (page /, API docs /docs)",
        flush=True,
    )
    uvicorn.run(
        create_app(served=served),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
    )


#: The app ``uvicorn serving.app:app`` runs (settings from the environment at start-up).
app = create_app()
