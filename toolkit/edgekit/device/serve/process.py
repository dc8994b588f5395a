"""One server for the measurement: ``python -m edgekit.device.serve.process VARIANT CONFIG``.

``VARIANT`` is ``edgekit`` (the real app, with the config's batching) or ``per-request`` (the
:mod:`.baseline`); ``CONFIG`` is a :class:`ServeConfig` as JSON. Prints the URL on its first
line of output once listening; SIGTERM stops it like Ctrl-C (in-flight requests finish).
"""

from __future__ import annotations

import json
import signal
import sys
import types

from edgekit.device.serve import baseline, server
from edgekit.device.serve.config import ServeConfig

VARIANTS = ("edgekit", "per-request")


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt()


def main(arguments: list[str]) -> int:
    if len(arguments) != 2 or arguments[0] not in VARIANTS:
        print(f"usage: python -m edgekit.device.serve.process {{{'|'.join(VARIANTS)}}} CONFIG_JSON",
              file=sys.stderr)
        return 2
    variant, payload = arguments
    config = ServeConfig.from_dict(json.loads(payload))
    signal.signal(signal.SIGTERM, _interrupt)  # uvicorn raises it again after a graceful stop
    if variant == "per-request":
        app = baseline.create_app(config.model, config.threads)
    else:
        from edgekit.device.serve import app as app_module
        from edgekit.device.serve import served

        app = app_module.create_app(served.open_model(config.model, config.threads), config)
    sock = server.bind(config.host, config.port)
    print(server.url_of(sock), flush=True)
    server.run(app, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
