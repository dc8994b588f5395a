"""One server for the measurement: ``python -m edgekit.device.serve.process VARIANT CONFIG``.

``VARIANT`` is ``edgekit`` (the real app, with the config's options) or ``wrapper`` (the
:mod:`.baseline` a user would write, on uvicorn's defaults: only the config's model is used);
``CONFIG`` is a :class:`ServeConfig` as JSON. Prints the URL on its first
line of output once listening; SIGTERM stops it like Ctrl-C (in-flight requests finish).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import types

from edgekit.device.serve import baseline, server
from edgekit.device.serve.config import ServeConfig

VARIANTS = ("edgekit", "wrapper")


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt()


def _announce(url: str) -> None:
    """The URL as stdout's only line; then stdout goes where stderr goes (uvicorn's access log
    writes to stdout, and nobody reads the pipe after the first line: it would fill and block)."""
    print(url, flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def main(arguments: list[str]) -> int:
    if len(arguments) != 2 or arguments[0] not in VARIANTS:
        print(f"usage: python -m edgekit.device.serve.process {{{'|'.join(VARIANTS)}}} CONFIG_JSON",
              file=sys.stderr)
        return 2
    variant, payload = arguments
    config = ServeConfig.from_dict(json.loads(payload))
    signal.signal(signal.SIGTERM, _interrupt)  # uvicorn raises it again after a graceful stop
    sock = server.bind(config.host, config.port)
    if variant == "wrapper":
        wrapper = baseline.create_app(config.model)
        _announce(server.url_of(sock))
        try:
            baseline.run(wrapper, sock)
        except KeyboardInterrupt:
            pass  # uvicorn raises the signal again after its graceful stop
        return 0
    from edgekit.device.serve import app as app_module
    from edgekit.device.serve import served

    server.configure_logging()  # the request log, as `edgekit serve` writes it
    if config.workers > 1:
        from edgekit.device.serve import workers

        _announce(server.url_of(sock))
        workers.run(config, sock)
        return 0
    app = app_module.create_app(served.open_model(config.model, config.threads), config)
    _announce(server.url_of(sock))
    server.run(app, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
