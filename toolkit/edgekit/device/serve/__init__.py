"""``edgekit serve``: one exported model as an HTTP API and a web page, TensorFlow-free.

FastAPI on uvicorn (``pip install 'edgekit[serve]'``) over :mod:`edgekit.device.runtime`:

- :mod:`.config`   the server's settings and limits (``ServeConfig``);
- :mod:`.served`   the model, checked against its release's manifest, and the shape of a result;
- :mod:`.batching` micro-batching: one worker thread owns the model;
- :mod:`.uploads`  reading an upload (multipart or a raw body) within the limits;
- :mod:`.limits`   the upload-size guard (413 before the body is read) and JSON errors;
- :mod:`.app`      the ASGI app: ``/v1/predict``, ``/v1/model``, ``/healthz``, ``/``;
- :mod:`.page`     the self-contained web page;
- :mod:`.server`   running it under uvicorn, stopping cleanly on Ctrl-C and SIGTERM;
- :mod:`.measure`  requests/s and latency under concurrency (with :mod:`.baseline` and
  :mod:`.process`, the servers it measures).
"""
