"""Per-layer error arithmetic: float Keras outputs against an artifact's intermediate tensors.

For each Keras layer that has a tensor in the artifact:

- **accumulated**: the artifact's tensor (dequantised) against the float model's output at that
  layer: SQNR of the whole tensor, SQNR of its worst channel (last axis), and the RMS error in
  quantisation steps of that tensor;
- **local**: the error this layer's own output quantisation makes when fed the float values:
  the float output rounded and clipped with the artifact's scale and zero point, against itself
  (only where the tensor is quantised);
- **introduced**: how much mean per-channel noise-to-signal ratio (NSR) the layer adds over its
  inputs: accumulated NSR here minus the largest accumulated NSR among the nearest layers
  feeding it.

Layers are ranked by ``score = max(introduced, local)``, both as mean per-channel NSR. Channels
are averaged rather than pooled so that one wide channel cannot hide the others: a tensor whose
outlier channel sets the quantisation step rounds its other channels to zero (per-channel NSR
1) while the pooled SQNR stays high.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

NSR_CAP = 1.0  # a channel with nothing of its signal left (0 dB); worse counts the same


@dataclasses.dataclass(frozen=True)
class Quantised:
    """How a tensor is stored in the artifact: ``q = round(x / scale) + zero_point``."""

    scale: float
    zero_point: int
    low: int
    high: int


@dataclasses.dataclass
class LayerError:
    layer: str
    tensor: str
    sqnr_db: float
    worst_channel_sqnr_db: float
    worst_channel: int
    mean_channel_nsr: float
    rmse_steps: float | None
    local_sqnr_db: float | None = None
    local_worst_channel_sqnr_db: float | None = None
    local_mean_channel_nsr: float | None = None
    introduced_nsr: float = 0.0
    score: float = 0.0
    # The computing layers this tensor holds with ``layer``, in network order (ops the converter
    # fused: a convolution, its batch norm and activation have one tensor, the last one's).
    group: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return " + ".join(self.group) if len(self.group) > 1 else self.layer

    def to_dict(self) -> dict[str, Any]:
        return {key: (None if isinstance(value, float) and not math.isfinite(value)
                      else round(value, 6) if isinstance(value, float) else value)
                for key, value in dataclasses.asdict(self).items()}


def to_db(nsr: float) -> float:
    return math.inf if nsr <= 0 else -10 * math.log10(nsr)


def channel_nsr(reference: np.ndarray, observed: np.ndarray) -> tuple[float, np.ndarray]:
    """Pooled NSR of the tensor and NSR per channel (last axis; channels silent in the float
    model are left out)."""
    reference = reference.astype(np.float64).reshape(-1, reference.shape[-1])
    noise = (observed.astype(np.float64).reshape(reference.shape) - reference) ** 2
    signal = reference ** 2
    pooled = float(noise.sum() / max(signal.sum(), 1e-30))
    channel_signal, channel_noise = signal.mean(axis=0), noise.mean(axis=0)
    alive = channel_signal > 0
    per_channel = np.minimum(channel_noise[alive] / channel_signal[alive], NSR_CAP)
    return min(pooled, NSR_CAP), per_channel


def fake_quantise(values: np.ndarray, quantised: Quantised) -> np.ndarray:
    steps = np.clip(np.round(values / quantised.scale) + quantised.zero_point,
                    quantised.low, quantised.high)
    return ((steps - quantised.zero_point) * quantised.scale).astype(np.float32)


def layer_error(layer: str, tensor: str, reference: np.ndarray, observed: np.ndarray,
                quantised: Quantised | None) -> LayerError:
    pooled, per_channel = channel_nsr(reference, observed)
    worst = int(np.argmax(per_channel)) if per_channel.size else 0
    rmse = float(np.sqrt(np.mean((observed.astype(np.float64) - reference) ** 2)))
    result = LayerError(
        layer, tensor, to_db(pooled), to_db(float(per_channel.max()) if per_channel.size else 0),
        worst, float(per_channel.mean()) if per_channel.size else 0.0,
        rmse / quantised.scale if quantised else None)
    if quantised is not None:
        local_pooled, local_channels = channel_nsr(reference, fake_quantise(reference, quantised))
        result.local_sqnr_db = to_db(local_pooled)
        result.local_worst_channel_sqnr_db = to_db(
            float(local_channels.max()) if local_channels.size else 0.0)
        result.local_mean_channel_nsr = float(local_channels.mean()) if local_channels.size else 0.0
    return result


def nearest_measured(layer: str, parents: dict[str, list[str]], measured: set[str]) -> set[str]:
    """The closest layers upstream of ``layer`` that were measured (walking through the rest)."""
    found: set[str] = set()
    stack, seen = list(parents.get(layer, [])), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in measured:
            found.add(name)
        else:
            stack.extend(parents.get(name, []))
    return found


def group_of(layer: str, parents: dict[str, list[str]], measured: set[str],
             computing: list[str]) -> list[str]:
    """``layer`` and the computing layers upstream of it that have no tensor of their own."""
    members, stack = {layer}, list(parents.get(layer, []))
    while stack:
        name = stack.pop()
        if name in measured or name in members:
            continue
        members.add(name)
        stack.extend(parents.get(name, []))
    return [name for name in computing if name in members]


def rank(errors: list[LayerError], parents: dict[str, list[str]],
         computing: list[str] | None = None) -> list[LayerError]:
    """Fill in each layer's introduced error, score and group; return the layers worst first."""
    by_name = {error.layer: error for error in errors}
    for error in errors:
        error.group = group_of(error.layer, parents, set(by_name), computing or [error.layer])
        upstream = nearest_measured(error.layer, parents, set(by_name))
        before = max((by_name[name].mean_channel_nsr for name in upstream), default=0.0)
        error.introduced_nsr = max(0.0, error.mean_channel_nsr - before)
        error.score = max(error.introduced_nsr, error.local_mean_channel_nsr or 0.0)
    return sorted(errors, key=lambda error: error.score, reverse=True)


def layouts(reference: np.ndarray, observed: np.ndarray) -> list[np.ndarray]:
    """``observed`` in every layout that could be the reference's (an ONNX graph's NCHW
    tensors turned NHWC; a flattened tensor reshaped)."""
    found = []
    if observed.shape == reference.shape:
        found.append(observed)
    if observed.ndim == 4 and observed.transpose(0, 2, 3, 1).shape == reference.shape:
        found.append(observed.transpose(0, 2, 3, 1))
    if not found and observed.size == reference.size and observed.shape[0] == reference.shape[0]:
        found.append(observed.reshape(reference.shape))
    return found


def best_candidate(reference: np.ndarray,
                   candidates: list[tuple[str, np.ndarray, Quantised | None]]
                   ) -> tuple[str, np.ndarray, Quantised | None] | None:
    """Of the artifact tensors named after one layer, the one that is its output (closest)."""
    best, best_nsr = None, math.inf
    for name, values, quantised in candidates:
        for shaped in layouts(reference, values):
            nsr, _ = channel_nsr(reference, shaped)
            if nsr < best_nsr:
                best, best_nsr = (name, shaped, quantised), nsr
    return best
