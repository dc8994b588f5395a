"""The API's JSON shapes, for the OpenAPI schema (answers are built as plain dicts; the tests
validate real answers against these models, so the documentation cannot drift)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TopClass(BaseModel):
    label: str
    class_: int = Field(alias="class")
    probability: float


class ImageTime(BaseModel):
    prepare: float = Field(description="decoding and preparing the image(s), ms")
    model: float = Field(description="the model call(s) they ran in (shared with their batch), ms")


class ImageResult(TopClass):
    """The best class (label, class, probability), then the rest of the answer."""

    image: str = Field(description="the upload's file name, or 'image N'")
    predictions: list[TopClass] = Field(description="the top-k classes, best first")
    probabilities: list[float] = Field(description="every class, in label order (float32 values)")
    preprocessing: list[str] = Field(description="the preparation steps that changed the picture")
    time_ms: ImageTime
    prepared_png: str | None = Field(None, description="with ?prepared=true: the model's input as "
                                                       "a data:image/png URL")


class RequestTime(ImageTime):
    read: float = Field(description="receiving and parsing the body, ms")
    queue: float = Field(description="waiting for the model thread (and for a batch to fill), ms")
    total: float = Field(description="in the app, from the request's headers to its answer, ms")


class PredictResponse(BaseModel):
    model: str
    results: list[ImageResult]
    batch_images: int = Field(description="images in the largest model call this request ran in")
    time_ms: RequestTime


class ErrorResponse(BaseModel):
    error: str = Field(description="a short code, e.g. upload_too_large, not_an_image")
    detail: str = Field(description="what went wrong and what to do")


class ModelInfo(BaseModel):
    file: str
    release: str
    format: str
    precision: str
    bytes: int
    sha256: str
    labels: list[str]
    contract: dict[str, Any]
    tensors: dict[str, Any]
    metrics: dict[str, Any] = Field(description="the parity record: accuracy, agreement, ...")
    limits: dict[str, Any]
    batching: dict[str, Any]


class Health(BaseModel):
    status: str = Field(description="ok, starting or failed")
    model: str
    detail: str | None = None
