"""``edgekit serve --workers N``: N server processes accepting on one listening socket.

uvicorn's own supervisor (:class:`uvicorn.supervisors.Multiprocess`) starts the workers (spawned
processes: each imports edgekit, loads and checks the model and warms it up, as one server
does), replaces a worker that dies, and on SIGINT or SIGTERM stops them all, each answering its
requests in flight first. The kernel hands each new connection to one of the processes waiting
on the socket. The settings reach the workers in an environment variable, which the app
factory below reads. One process (the default) does not come here: it is :func:`server.run`.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from uvicorn.supervisors import Multiprocess

from edgekit.device.serve import server
from edgekit.device.serve.config import ServeConfig

ENV = "EDGEKIT_SERVE_CONFIG"


def app() -> Any:
    """One worker's ASGI app (uvicorn calls this factory in each worker process)."""
    from edgekit.device.serve import app as app_module
    from edgekit.device.serve import served

    config = ServeConfig.from_dict(json.loads(os.environ[ENV]))
    server.configure_logging()
    return app_module.create_app(served.open_model(config.model, config.threads), config)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, remembering which signal stopped it."""

    stop_signal: str | None = None

    def handle_int(self) -> None:
        self.stop_signal = self.stop_signal or "SIGINT"
        super().handle_int()

    def handle_term(self) -> None:
        self.stop_signal = self.stop_signal or "SIGTERM"
        super().handle_term()


def run(config: ServeConfig, sock: socket.socket) -> str | None:
    """Serve with ``config.workers`` processes on ``sock`` until SIGINT or SIGTERM; return that
    signal's name."""
    os.environ[ENV] = json.dumps(config.to_dict())
    supervisor = _Supervisor(server.uvicorn_config(f"{__name__}:app", factory=True,
                                                   workers=config.workers), sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    return supervisor.stop_signal
