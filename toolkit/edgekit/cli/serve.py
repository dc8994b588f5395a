"""`edgekit serve`: an exported model as an HTTP API and a web page, TensorFlow-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import DEFAULT_DEVICE_MODEL, config_or_bad_parameter, friendly_errors
from edgekit.device.serve.config import DEFAULT_THREADS  # plain Python: no server library

SERVE_EXTRA = "pip install 'edgekit[serve]'"


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_DEVICE_MODEL,
              show_default=True,
              help="An exported .onnx or .tflite; it must be listed in the manifest of its folder.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: any free port; the URL printed names it).")
@click.option("--threads", type=click.IntRange(1, 64), default=DEFAULT_THREADS, show_default=True,
              help="Runtime threads per model call (the server runs requests side by side; "
                   "more threads help a large model).")
@click.option("--max-upload-mb", type=click.FloatRange(0, 1024, min_open=True), default=10.0,
              show_default=True, help="Largest request body in MiB; larger ones get 413 unread.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Most images per model call when requests arrive together (1: no batching).")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 1000), default=0.0, show_default=True,
              help="Longest a batch waits for requests still being read (0: it takes what is "
                   "queued when the model is free).")
@click.option("--max-images", type=click.IntRange(1, 10_000), default=64, show_default=True,
              help="Most images in one request.")
@click.option("--decode-budget-mpx", type=click.FloatRange(0, 10_000, min_open=True), default=40.0,
              show_default=True,
              help="Most pixels (millions) decoded at once across requests; bounds their memory.")
@click.option("--decode-wait-s", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="Longest an image waits for the decode budget; then 429 with Retry-After.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port, each with its own copy of the model "
                   "(1: this process serves).")
@click.option("--quiet", is_flag=True, help="No log line per request.")
@click.option("--benchmark", is_flag=True,
              help="Instead of serving: measure requests/s and latency (1 and 16 clients; "
                   "this server, it without batching, and the FastAPI wrapper a user would "
                   "write, taking turns) and write "
                   "reports/serve_benchmark.json in the model's release folder.")
@click.option("--benchmark-requests", type=click.IntRange(16, 1_000_000), default=320,
              show_default=True, help="With --benchmark: requests per server, client count and round.")
@click.option("--benchmark-rounds", type=click.IntRange(1, 50), default=3, show_default=True,
              help="With --benchmark: rounds in which the servers take turns.")
@friendly_errors
def serve(model_path: Path, host: str, port: int, threads: int | None, max_upload_mb: float,
          max_batch: int, batch_wait_ms: float, max_images: int, decode_budget_mpx: float,
          decode_wait_s: float, workers: int, quiet: bool, benchmark: bool,
          benchmark_requests: int, benchmark_rounds: int) -> None:
    """Serve an exported model: POST /v1/predict, GET /v1/model, GET /healthz, a page at /.

    \b
    Needs the serve extra (FastAPI, uvicorn; no TensorFlow): pip install 'edgekit[serve]'.
    Ctrl-C or SIGTERM stops it; requests already in flight are answered first.
    """
    _require_serve_extra()
    from edgekit.device.serve.config import ServeConfig

    config = config_or_bad_parameter(
        ServeConfig, model=model_path, host=host, port=port, threads=threads,
        max_upload_mb=max_upload_mb, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
        max_images=max_images, decode_budget_mpx=decode_budget_mpx, decode_wait_s=decode_wait_s,
        log_requests=not quiet, workers=workers)
    if benchmark:
        _benchmark(config, benchmark_requests, benchmark_rounds)
    else:
        _serve(config)


def _require_serve_extra() -> None:
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "python_multipart")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"{', '.join(missing)} not installed; edgekit serve needs the "
                                   f"serve extra: {SERVE_EXTRA}")


def _serve(config: Any) -> None:
    from edgekit.device.serve import app as app_module
    from edgekit.device.serve import served, server

    model = served.open_model(config.model, config.threads)
    try:
        sock = server.bind(config.host, config.port)
    except OSError as error:
        raise click.ClickException(f"{error}. Pick another --port (0: any free one).") from None
    server.configure_logging()
    url = server.url_of(sock)
    wait = f"{config.batch_wait_ms:g} ms wait" if config.batch_wait_ms else "no wait"
    batching = f"batches of up to {config.max_batch}, {wait}" if config.batching else "no batching"
    click.echo(f"Serving {model.name} ({model.entry['precision']}, {batching}) at {url}")
    click.echo(f"  try: curl -F image=@shirt.png {url}v1/predict   (schema: {url}openapi.json; "
               "Ctrl-C stops)")
    if config.workers > 1:
        from edgekit.device.serve import workers

        click.echo(f"  {config.workers} worker processes, each with its own copy of the model")
        stopped = workers.run(config, sock)
    else:
        stopped = server.run(app_module.create_app(model, config), sock)
    reason = f"on {stopped}" if stopped else "by uvicorn"
    click.echo(f"Stopped {reason}: requests in flight were answered.", err=True)


def _benchmark(config: Any, requests: int, rounds: int) -> None:
    from edgekit.device.serve import measure

    measure_config = config_or_bad_parameter(
        measure.MeasureConfig, model=config.model, requests=requests, rounds=rounds,
        threads=config.threads, max_batch=config.max_batch, batch_wait_ms=config.batch_wait_ms,
        workers=config.workers)
    if measure_config.max_batch < 2:
        raise click.BadParameter("--benchmark also runs the server without batching: give --max-batch >= 2.")
    report = measure.run(measure_config, progress=lambda line: click.echo(f"  {line}", err=True))
    click.echo(measure.table(report))
    path = measure.write(report, config.model.parent)
    click.echo(f"Wrote {path}. Next: edgekit serve --model {config.model}")
