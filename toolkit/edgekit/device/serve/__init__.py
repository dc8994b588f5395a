"""``edgekit serve``: one exported model as an HTTP API and a web page, TensorFlow-free.

FastAPI on uvicorn (``pip install 'edgekit[serve]'``) over :mod:`edgekit.device.runtime`:

- :mod:`.config`   the server's settings and limits (``ServeConfig``);
- :mod:`.served`   the model, checked against its release's manifest, and the shape of a result;
- :mod:`.batching` micro-batching: one worker thread owns the model;
- :mod:`.uploads`  reading an upload (multipart or a raw body) within the limits;
- :mod:`.multipart` the strict, incremental multipart reader;
- :mod:`.decoding` decoding by pixel count, within a pixel budget shared by requests;
- :mod:`.limits`   the upload-size guard (413 before the body is read), JSON errors, the log line;
- :mod:`.predict`  ``POST /v1/predict`` as a plain ASGI handler (the lean path);
- :mod:`.app`      the ASGI app: that path, and FastAPI for ``/v1/model``, ``/healthz``, ``/``;
- :mod:`.page`     the self-contained web page;
- :mod:`.server`   running it under uvicorn, stopping cleanly on Ctrl-C and SIGTERM;
- :mod:`.measure`  requests/s, latency and CPU per request under concurrency, against the
  FastAPI wrapper a user would write (:mod:`.baseline`; :mod:`.process` runs each server).
"""
