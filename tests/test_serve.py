"""`edgekit serve`: the API through FastAPI's test client, then as a real process on loopback.

Every answer is compared with `edgekit.runtime` on the same prepared pixels; every bad request
gets a 4xx JSON error and one log line, and the next good request is answered.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS, EXPORTED, ROOT, run_cli, start_edgekit
from edgekit import cli, errors
from edgekit.device import images, runtime

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'edgekit[serve]'")
httpx = pytest.importorskip("httpx", reason="needs the dev extra (httpx)")

from fastapi.testclient import TestClient  # noqa: E402

from edgekit.device.serve import app as app_module  # noqa: E402
from edgekit.device.serve import limits, schemas, served  # noqa: E402
from edgekit.device.serve.batching import MicroBatcher  # noqa: E402
from edgekit.device.serve.config import ServeConfig  # noqa: E402

DATA = ROOT / "tests" / "data"
INT8 = EXPORTED / "model_int8.tflite"
MAX_IMAGES = 8
TOLERANCE = 1e-6


def png_bytes(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(stream, format="PNG")
    return stream.getvalue()


def expected_probabilities(model: runtime.LoadedModel, data: bytes) -> np.ndarray:
    """What edgekit.runtime answers for an image file's bytes (the same preparation)."""
    prepared = images.prepare_bytes(data, "image", model.contract)
    return model.predict(prepared.pixels[None])[0]


def image_files(pngs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart field ``image`` once per file, named 0.png, 1.png, ..."""
    return [("image", (f"{index}.png", data, "image/png")) for index, data in enumerate(pngs)]


def wait_ready(client: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.01)


def make_client(model_path: Path = INT8, **settings: Any) -> TestClient:
    config = ServeConfig(model=model_path, **{"max_upload_mb": 1, "max_images": MAX_IMAGES, **settings})
    return TestClient(app_module.create_app(served.open_model(model_path), config))


def assert_answer_matches(result: dict[str, Any], expected: np.ndarray, labels: tuple[str, ...]) -> None:
    probabilities = np.asarray(result["probabilities"])
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=TOLERANCE)
    best = int(np.argmax(expected))
    assert (result["label"], result["class"]) == (labels[best], best)
    ranked = [prediction["probability"] for prediction in result["predictions"]]
    assert ranked == sorted(ranked, reverse=True) and result["predictions"][0]["class"] == best


# --- health, model record, schema, page -----------------------------------------------------

def test_healthz_is_ok_once_warm(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "model_int8.tflite"}


class GatedModel:
    """The real model behind a gate: predict waits until the test opens it (or fails)."""

    def __init__(self, model: runtime.LoadedModel, failure: Exception | None = None) -> None:
        self.model = model
        self.gate = threading.Event()
        self.failure = failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        if self.failure is not None:
            raise self.failure
        self.gate.wait(10)
        return self.model.predict(pixels)


def test_healthz_is_503_until_the_warm_up_call_succeeds(test_pngs):
    real = served.open_model(INT8)
    gated = GatedModel(real.model)
    app = app_module.create_app(dataclasses.replace(real, model=gated), ServeConfig(model=INT8))  # type: ignore[arg-type]
    with TestClient(app) as test_client:
        waiting = test_client.get("/healthz")
        assert waiting.status_code == 503 and waiting.json()["status"] == "starting"
        refused = test_client.post("/v1/predict", files={"image": ("a.png", test_pngs[0], "image/png")})
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        gated.gate.set()
        wait_ready(test_client)
        assert test_client.post("/v1/predict", content=test_pngs[0],
                                headers={"Content-Type": "image/png"}).status_code == 200


def test_a_failed_warm_up_keeps_healthz_at_503():
    real = served.open_model(INT8)
    broken = GatedModel(real.model, failure=errors.ModelError("the weights are broken"))
    app = app_module.create_app(dataclasses.replace(real, model=broken), ServeConfig(model=INT8))  # type: ignore[arg-type]
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 10
        while (answer := test_client.get("/healthz").json())["status"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert answer["status"] == "failed" and "the weights are broken" in answer["detail"]
        assert test_client.get("/healthz").status_code == 503


def test_model_endpoint_reports_the_manifest_record(client, reference):
    response = client.get("/v1/model")
    assert response.status_code == 200
    info = response.json()
    schemas.ModelInfo.model_validate(info)
    manifest = json.loads((EXPORTED / "manifest.json").read_text())
    entry = next(artifact for artifact in manifest["artifacts"] if artifact["file"] == INT8.name)
    assert info["labels"] == manifest["labels"] == list(reference.labels)
    assert info["contract"] == reference.contract.to_dict()
    assert (info["file"], info["sha256"], info["precision"]) == (INT8.name, entry["sha256"], "int8")
    assert info["metrics"] == entry["metrics"] and info["metrics"]["agreement"] > 0.99
    assert info["limits"]["max_images"] == MAX_IMAGES and info["limits"]["max_upload_bytes"] == 1024 * 1024


def test_openapi_schema_documents_the_api_and_no_cdn_docs_page(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body)
    assert {"413", "415", "422"} <= set(schema["paths"]["/v1/predict"]["post"]["responses"])
    for page in ("/docs", "/redoc"):  # FastAPI's pages load their scripts from a CDN
        assert client.get(page).status_code == 404


def test_the_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<script>" in html and "<style>" in html and 'id="file"' in html
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), "the page must not load anything remote"
    assert "http://" not in html and "https://" not in html
    assert "default-src 'none'" in response.headers["content-security-policy"]


# --- answers equal edgekit.runtime ----------------------------------------------------------

@pytest.mark.parametrize("how", ["multipart", "raw body"])
def test_answer_equals_the_runtime_on_test_images(client, reference, test_pngs, how):
    for data in test_pngs:
        if how == "multipart":
            response = client.post("/v1/predict", files={"image": ("test.png", data, "image/png")})
        else:
            response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        answer = response.json()
        schemas.PredictResponse.model_validate(answer)
        (result,) = answer["results"]
        assert_answer_matches(result, expected_probabilities(reference, data), reference.labels)
        assert result["preprocessing"] == [] and len(result["predictions"]) == 3


def test_every_odd_file_gets_the_runtimes_answer_and_preprocessing(client, reference):
    for path in sorted((DATA / "odd").iterdir()):
        data = path.read_bytes()
        response = client.post("/v1/predict?top_k=10&prepared=true",
                               files={"image": (path.name, data, "application/octet-stream")})
        assert response.status_code == 200, (path.name, response.text)
        (result,) = response.json()["results"]
        assert result["image"] == path.name
        assert_answer_matches(result, expected_probabilities(reference, data), reference.labels)
        assert result["preprocessing"] == images.prepare_bytes(data, path.name, reference.contract).steps
        assert len(result["predictions"]) == 10
        prepared = Image.open(io.BytesIO(base64.b64decode(result["prepared_png"].split(",")[1])))
        expected_pixels = images.prepare_bytes(data, path.name, reference.contract).pixels[:, :, 0]
        np.testing.assert_array_equal(np.asarray(prepared), expected_pixels)


def test_several_images_in_one_request_keep_their_order(client, reference, test_pngs):
    response = client.post("/v1/predict", files=image_files(test_pngs[:MAX_IMAGES]),
                           data={"note": "other fields are ignored"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["image"] for result in results] == [f"{index}.png" for index in range(MAX_IMAGES)]
    for result, data in zip(results, test_pngs, strict=False):
        assert_answer_matches(result, expected_probabilities(reference, data), reference.labels)


@pytest.mark.parametrize("artifact", ARTIFACTS, ids=ARTIFACTS)
def test_every_artifact_is_served_as_the_runtime_runs_it(artifact, test_pngs):
    model = runtime.load(EXPORTED / artifact)
    with make_client(EXPORTED / artifact, max_batch=3) as test_client:  # 8 images: 3 model calls
        wait_ready(test_client)
        response = test_client.post("/v1/predict", files=image_files(test_pngs[:8]))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == artifact
        for result, data in zip(response.json()["results"], test_pngs, strict=False):
            assert_answer_matches(result, expected_probabilities(model, data), model.labels)


# --- bad requests: a 4xx JSON error, one log line, and the server keeps answering ------------

def multipart_body(parts: list[tuple[str, str, bytes]], boundary: str = "edgekit-test") -> bytes:
    chunks = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\""
              f"\r\nContent-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
              for name, filename, data in parts]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def tiny_parts(count: int) -> bytes:
    return multipart_body([("image", f"{index}.png", b"x") for index in range(count)])


MULTIPART = {"Content-Type": "multipart/form-data; boundary=edgekit-test"}


def bad_file(name: str) -> dict[str, Any]:
    data = (DATA / "bad" / "images" / name).read_bytes()
    return {"files": {"image": (name, data, "image/png")}}


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "not an image": (bad_file("not-an-image.png"), 422, "not_an_image"),
    "truncated png": (bad_file("truncated.png"), 422, "not_an_image"),
    "truncated jpeg": (bad_file("truncated.jpg"), 422, "not_an_image"),
    "bad crc": (bad_file("bad-crc.png"), 422, "not_an_image"),
    "svg": (bad_file("vector.svg"), 422, "not_an_image"),
    "decompression bomb png": (bad_file("bomb.png"), 422, "not_an_image"),
    "decompression bomb jpeg": (bad_file("bomb.jpg"), 422, "not_an_image"),
    "empty file": (bad_file("empty.png"), 400, "empty_image"),
    "empty raw body": ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty_image"),
    "over the upload limit": ({"content": b"\0" * (1024 * 1024 + 1),
                               "headers": {"Content-Type": "image/png"}}, 413, "upload_too_large"),
    "json": ({"json": {"image": "shirt.png"}}, 415, "unsupported_media_type"),
    "text": ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
             "unsupported_media_type"),
    "no content type": ({"content": b"\x89PNG"}, 415, "unsupported_media_type"),
    "form without image": ({"data": {"picture": "x"}, "files": {"other": ("a.png", b"x", "image/png")}},
                           400, "no_image"),
    "too many images": ({"content": tiny_parts(MAX_IMAGES + 1), "headers": MULTIPART}, 413,
                        "too_many_images"),
    "a thousand images": ({"content": tiny_parts(1000), "headers": MULTIPART}, 413, "too_many_images"),
    "no boundary": ({"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400,
                    "bad_multipart"),
    "multipart cut short": ({"content": multipart_body([("image", "a.png", b"x" * 100)])[:-20],
                             "headers": MULTIPART}, 400, "bad_multipart"),
    "top_k not a number": ({"params": {"top_k": "many"}}, 422, "invalid_parameter"),
    "top_k zero": ({"params": {"top_k": 0}}, 422, "invalid_parameter"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=BAD_REQUESTS)
def test_a_bad_request_is_one_json_error_and_one_log_line(client, reference, test_pngs, caplog, case):
    request, status, code = BAD_REQUESTS[case]
    with caplog.at_level(logging.INFO, logger="edgekit.serve"):
        response = client.post("/v1/predict", **request)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code and response.json()["detail"]
    schemas.ErrorResponse.model_validate(response.json())
    lines = [record.getMessage() for record in caplog.records if record.name == "edgekit.serve"]
    assert len(lines) == 1 and f" {status} " in lines[0] and code in lines[0], lines
    good = client.post("/v1/predict", files={"image": ("boot.png", test_pngs[0], "image/png")})
    assert good.status_code == 200
    assert_answer_matches(good.json()["results"][0], expected_probabilities(reference, test_pngs[0]),
                          reference.labels)


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/predict", 405), ("GET", "/nowhere", 404),
                                                  ("POST", "/v1/model", 405)])
def test_wrong_routes_are_json_errors(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status and set(response.json()) == {"error", "detail"}


async def asgi_call(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Call an ASGI app with a body in ``chunks``; return (status, chunks the app read)."""
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers,
             "query_string": b""}
    await app(scope, receive, send)
    return sent[0]["status"], read


def test_the_upload_limit_refuses_before_the_body_is_read():
    async def reader(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = limits.BodyLimit(reader, max_bytes=1000)
    chunks = [b"x" * 300] * 100
    declared = [(b"content-length", b"30000")]
    assert asyncio.run(asgi_call(guarded, declared, chunks)) == (413, 0)  # not one chunk read
    status, read = asyncio.run(asgi_call(guarded, [], chunks))  # chunked: counted while streaming
    assert (status, read) == (413, 4)  # 1200 bytes > 1000: the fourth chunk, and no further
    assert asyncio.run(asgi_call(guarded, [], chunks[:3])) == (200, 3)


# --- micro-batching -------------------------------------------------------------------------

def test_requests_arriving_together_share_one_model_call():
    calls: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return np.repeat(pixels.reshape(len(pixels), -1)[:, :1].astype(np.float32), 2, axis=1)

    async def scenario(batcher: MicroBatcher, requests: int) -> tuple[list[float], float]:
        async def one(value: int) -> float:
            with batcher.arrival() as arrival:
                await asyncio.sleep(0.01 * value / requests)  # decoding, a little apart
                pending = arrival.submit(np.full((1, 2, 2, 1), value, dtype=np.uint8))
            return float((await pending).probabilities[0, 0])

        started = time.perf_counter()
        answers = await asyncio.gather(*(one(value) for value in range(requests)))
        return answers, time.perf_counter() - started

    batcher = MicroBatcher(predict, max_batch=8, wait_seconds=1.0)
    batcher.start()
    answers, _ = asyncio.run(scenario(batcher, 8))
    assert answers == list(range(8)) and calls == [8]  # each answer is its own row
    calls.clear()
    _, seconds = asyncio.run(scenario(batcher, 1))
    assert calls == [1] and seconds < 0.5  # alone: no wait for others that are not coming
    batcher.close()

    unbatched = MicroBatcher(predict, max_batch=1, wait_seconds=1.0)
    unbatched.start()
    calls.clear()
    answers, _ = asyncio.run(scenario(unbatched, 4))
    assert answers == list(range(4)) and calls == [1, 1, 1, 1]
    unbatched.close()


def test_a_failing_model_call_fails_its_requests_not_the_worker():
    outcomes = iter([RuntimeError("once"), None])

    def predict(pixels: np.ndarray) -> np.ndarray:
        failure = next(outcomes)
        if failure is not None:
            raise failure
        return np.zeros((len(pixels), 2), dtype=np.float32)

    async def call(batcher: MicroBatcher) -> Any:
        return await batcher.submit(np.zeros((1, 2, 2, 1), dtype=np.uint8))

    batcher = MicroBatcher(predict, max_batch=4, wait_seconds=0)
    batcher.start()
    with pytest.raises(RuntimeError, match="once"):
        asyncio.run(call(batcher))
    assert asyncio.run(call(batcher)).probabilities.shape == (1, 2)
    batcher.close()


# --- the model is the release's own ---------------------------------------------------------

def test_a_model_outside_the_manifest_is_refused(exported_copy, tmp_path, runner):
    stray = exported_copy / "model_stray.tflite"
    shutil.copy(exported_copy / "model_int8.tflite", stray)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(exported_copy / "model_int8.tflite", lone / "model_int8.tflite")
    tampered = exported_copy / "model_fp32.onnx"
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"\0")
    for path, message in ((stray, "is not listed in"), (lone / "model_int8.tflite", "no manifest.json"),
                          (tampered, "does not match its manifest")):
        result = runner.invoke(cli.main, ["serve", "--model", str(path), "--port", "0"])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and message in result.output, result.output


def test_bad_option_values_are_usage_errors(runner):
    result = runner.invoke(cli.main, ["serve", "--max-upload-mb", "0"])
    assert result.exit_code == 2 and "--max-upload-mb" in result.output
    result = runner.invoke(cli.main, ["serve", "--benchmark", "--max-batch", "1"])
    assert result.exit_code == 2 and "--max-batch" in result.output


# --- a real server process on loopback ------------------------------------------------------

@dataclasses.dataclass
class LiveServer:
    process: subprocess.Popen[str]
    url: str
    host: str
    port: int
    log: Path

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def mark_log(self) -> int:
        """Log a marker request and wait for its line: the lines after it are new."""
        marker = f"/marker-{time.monotonic_ns()}"
        httpx.get(self.url.rstrip("/") + marker, timeout=10)
        deadline = time.monotonic() + 10
        while True:
            lines = self.log_lines()
            for number, line in enumerate(lines):
                if marker in line:
                    return number
            assert time.monotonic() < deadline, "the marker request was never logged"
            time.sleep(0.02)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)  # a server that does not stop fails the test
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return code, self.log.read_text()


def start_server(folder: Path, *options: str) -> LiveServer:
    """``edgekit serve`` on a free port of 127.0.0.1 (loopback only), ready to answer."""
    log = folder / "serve.log"
    with open(log, "w") as stderr:
        process = start_edgekit("serve", "--model", str(INT8), "--host", "127.0.0.1", "--port", "0",
                                *options, stderr=stderr)
    line = process.stdout.readline() if process.stdout else ""
    match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
    if match is None:
        process.kill()
        pytest.fail(f"no URL printed: {line!r} {log.read_text()[-2000:]}")
    server = LiveServer(process, match.group(0), match.group(1), int(match.group(2)), log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(server.url + "healthz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            server.stop()
            pytest.fail(f"the server never became ready: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("live"), "--max-upload-mb", "1")
    yield server
    server.stop()


def read_response(sock: socket.socket, seconds: float = 10) -> tuple[int, bytes]:
    sock.settimeout(seconds)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def test_live_413_arrives_before_the_body_is_sent(live_server):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {live_server.host}\r\nContent-Type: image/png\r\n"
            "Content-Length: 50000000\r\n\r\n").encode()
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(head)  # and not one byte of the 50 MB
        status, body = read_response(sock)
    assert status == 413 and json.loads(body)["error"] == "upload_too_large"


def test_live_413_stops_a_chunked_upload_midway(live_server):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {live_server.host}\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
    sent = 0
    with socket.create_connection((live_server.host, live_server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while sent < 64 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed: the answer is already waiting
        status, body = read_response(sock)
    assert status == 413 and json.loads(body)["error"] == "upload_too_large"
    assert sent < 16 * 1024 * 1024, f"the client could send {sent:,} bytes: the server read them all"


def test_live_bad_requests_then_good_ones(live_server, reference, test_pngs):
    before = live_server.mark_log()
    bad = [({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 422),
           ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400),
           ({"content": b"\0" * (2 * 1024 * 1024), "headers": {"Content-Type": "image/png"}}, 413),
           ({"json": {"image": 1}}, 415)]
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        for request, status in bad:
            response = http.post("/v1/predict", **request)
            assert response.status_code == status and "error" in response.json()
            good = http.post("/v1/predict", files={"image": ("boot.png", test_pngs[0], "image/png")})
            assert good.status_code == 200
            assert_answer_matches(good.json()["results"][0],
                                  expected_probabilities(reference, test_pngs[0]), reference.labels)
    lines = live_server.log_lines()[before + 1:live_server.mark_log()]
    assert len(lines) == 2 * len(bad), lines  # one line per request
    assert [line.split()[4] for line in lines] == [str(s) for _, s in bad for s in (s, 200)]


@pytest.mark.slow
def test_live_load_16_clients_by_50_requests(live_server, reference, test_split):
    pngs = [png_bytes(image) for image in test_split.images[:64]]
    expected = [expected_probabilities(reference, data) for data in pngs]
    clients, per_client = 16, 50
    before = live_server.mark_log()

    async def client(number: int, http: Any) -> list[tuple[int, int, dict[str, Any]]]:
        answers = []
        for step in range(per_client):
            index = (number * per_client + step) % len(pngs)
            upload = {"image": (f"{index}.png", pngs[index], "image/png")}
            response = await http.post("/v1/predict", files=upload)
            answers.append((index, response.status_code, response.json()))
        return answers

    async def load() -> list[tuple[int, int, dict[str, Any]]]:
        limits_ = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30, limits=limits_) as http:
            batches = await asyncio.wait_for(asyncio.gather(*(client(n, http) for n in range(clients))), 90)
        return [answer for batch in batches for answer in batch]

    answers = asyncio.run(load())
    assert len(answers) == clients * per_client
    assert all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:3]
    for index, _, answer in answers:
        assert_answer_matches(answer["results"][0], expected[index], reference.labels)
    assert all(answer["batch_images"] >= 1 for _, _, answer in answers)
    lines = live_server.log_lines()[before + 1:live_server.mark_log()]
    assert len(lines) == clients * per_client and all(" 200 " in line for line in lines)


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, reference, test_pngs):
    server = start_server(tmp_path)
    body = multipart_body([("image", "boot.png", test_pngs[0])])
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: {MULTIPART['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head + body[:100])  # the request is in flight: headers read, body incomplete
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None, "the server quit with a request in flight"
        sock.sendall(body[100:])
        status, answer = read_response(sock)
    assert status == 200
    assert_answer_matches(json.loads(answer)["results"][0], expected_probabilities(reference, test_pngs[0]),
                          reference.labels)
    code, log = server.stop()
    assert code == 0, log
    assert "Traceback" not in log
    assert log.strip().splitlines()[-1] == "Stopped on SIGTERM: requests in flight were answered.", log


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it every keep-alive
    answer waited 40 ms for the client's delayed ACK (measured before the fix)."""
    from edgekit.device.serve import server as server_module

    sock = server_module.bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert server_module.url_of(sock).startswith("http://127.0.0.1:")
    finally:
        sock.close()


@pytest.mark.slow
def test_benchmark_measures_every_server_and_writes_its_report(exported_copy):
    model = exported_copy / "model_int8.tflite"
    result = run_cli("serve", "--benchmark", "--model", str(model), "--benchmark-requests", "32",
                     "--benchmark-rounds", "1", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((exported_copy / "reports" / "serve_benchmark.json").read_text())
    rows = {(row["server"], row["clients"]): row for row in report["rows"]}
    servers = ("edgekit serve", "edgekit serve, batching off", "FastAPI wrapper")
    assert set(rows) == {(server, clients) for server in servers for clients in (1, 16)}
    for row in rows.values():
        assert row["requests"] == 32 and row["errors"] == 0 and row["wrong_labels"] == 0
        assert row["requests_per_second"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert rows[("edgekit serve, batching off", 16)]["images_per_model_call"] == 1.0
    for ratio in report["against_wrapper"]:
        found = rows[("edgekit serve", ratio["clients"])]["requests_per_second"]
        assert ratio["requests_per_second_ratio"] == found / rows[("FastAPI wrapper", ratio["clients"])][
            "requests_per_second"]
    phases = report["time_per_request"]["app_ms"]
    assert set(phases) == {"read", "prepare", "queue", "model", "total"}
    assert "requests/s" in result.stdout and "Per request" in result.stdout
    assert "the requests/s" in result.stdout  # the ratio against the wrapper


def test_without_the_serve_extra_the_error_names_it(runner, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "uvicorn" else real_find_spec(name, *rest))
    result = runner.invoke(cli.main, ["serve"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: uvicorn not installed; edgekit serve needs the serve extra: "
                                     "pip install 'edgekit[serve]'")
