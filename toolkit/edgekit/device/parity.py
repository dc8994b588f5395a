"""Parity arithmetic: how far an artifact's outputs are from the reference model's.

Device-safe (numpy and the standard library). Definitions follow DESIGN.md: accuracy,
top-1 agreement with the reference, max/mean absolute probability difference, the flip
table, per-class accuracy deltas and McNemar's exact test on correctness.

A user's test split may be small (with 100 images one flip is 1 %), so the agreement and the
accuracy drop carry 95 % Wilson intervals: a bar fails only when the whole interval misses it;
when the interval straddles the bar the check passes with a warning that says how many images
would show the bar is met.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Bar:
    """Pass conditions for one precision. ``None`` means "not checked"."""

    min_agreement_percent: float
    max_abs_diff: float | None
    max_accuracy_drop_pp: float

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


DEFAULT_BARS: dict[str, Bar] = {
    "fp32": Bar(99.98, 1e-4, 0.02),
    "fp16": Bar(99.9, 5e-3, 0.1),
    "dynamic": Bar(99.5, None, 0.3),
    "int8": Bar(99.0, None, 0.5),
}
BAR_FIELDS = {"agreement": "min_agreement_percent", "max_abs_diff": "max_abs_diff",
              "accuracy_drop": "max_accuracy_drop_pp"}


def with_overrides(bars: dict[str, Bar], overrides: list[str]) -> dict[str, Bar]:
    """Apply ``PRECISION.MEASURE=VALUE`` overrides, e.g. ``int8.agreement=99.5``."""
    result = dict(bars)
    for text in overrides:
        try:
            key, value_text = text.split("=", 1)
            precision, measure = key.strip().split(".", 1)
            value = None if value_text.strip().lower() in ("none", "off") else float(value_text)
        except ValueError:
            raise ValueError(f"bar {text!r} is not PRECISION.MEASURE=VALUE "
                             "(e.g. int8.agreement=99.5)") from None
        if precision not in result:
            raise ValueError(f"bar {text!r}: unknown precision {precision!r}; "
                             f"choose from {', '.join(result)}")
        if measure not in BAR_FIELDS:
            raise ValueError(f"bar {text!r}: unknown measure {measure!r}; "
                             f"choose from {', '.join(BAR_FIELDS)}")
        if value is None and measure != "max_abs_diff":
            raise ValueError(f"bar {text!r}: only max_abs_diff can be switched off")
        changes: dict[str, Any] = {BAR_FIELDS[measure]: value}
        result[precision] = dataclasses.replace(result[precision], **changes)
    return result


@dataclasses.dataclass(frozen=True)
class Check:
    measure: str
    value: float
    bar: float | None
    passed: bool
    comparison: str  # ">=" or "<="
    warning: str | None = None  # passed, but the sample is too small to show the bar is met
    interval: tuple[float, float] | None = None  # 95 % interval of the value


Z_95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (good at 0 % and 100 %, unlike Wald)."""
    if total <= 0:
        return (0.0, 1.0)
    rate = successes / total
    denominator = 1 + z * z / total
    centre = (rate + z * z / (2 * total)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def images_needed(rate: float, bar: float, z: float = Z_95) -> int | None:
    """How many images, at this observed ``rate``, would put the Wilson lower bound at ``bar``."""
    if rate <= bar:
        return None
    total = 1
    while wilson_interval(round(rate * total), total, z)[0] < bar:
        total *= 2
        if total > 10**9:
            return None
    low, high = total // 2, total
    while low + 1 < high:
        middle = (low + high) // 2
        if wilson_interval(round(rate * middle), middle, z)[0] >= bar:
            high = middle
        else:
            low = middle
    return high


def agreement_check(agreeing: int, total: int, bar_percent: float) -> Check:
    rate, bar = agreeing / total, bar_percent / 100
    low, high = wilson_interval(agreeing, total)
    warning = None
    if high < bar - 1e-12:
        passed = False
    else:
        passed = True
        if low < bar - 1e-12:
            needed = images_needed(rate, bar)
            warning = (f"{total:,} images cannot show agreement >= {bar_percent:g} % (95 % "
                       f"interval {100 * low:.2f}-{100 * high:.2f} %)"
                       + (f"; about {needed:,} would at this rate" if needed else ""))
    return Check("agreement_percent", 100 * rate, bar_percent, passed, ">=", warning,
                 (100 * low, 100 * high))


def accuracy_drop_check(reference_only: int, artifact_only: int, total: int,
                        bar_pp: float) -> Check:
    """The drop (b - c) / n with an interval from the Wilson interval of b among b + c flips."""
    drop = 100 * (reference_only - artifact_only) / total
    discordant = reference_only + artifact_only
    share_low, share_high = wilson_interval(reference_only, discordant)
    low = 100 * discordant / total * (2 * share_low - 1)
    high = 100 * discordant / total * (2 * share_high - 1)
    passed, warning = True, None
    if low > bar_pp + 1e-9:
        passed = False
    elif high > bar_pp + 1e-9:
        if drop > bar_pp + 1e-9 or discordant * 100 / total > bar_pp:
            warning = (f"{total:,} images cannot show an accuracy drop <= {bar_pp:g} pp (95 % "
                       f"interval {low:+.2f} to {high:+.2f} pp over {discordant} changed answers)")
    return Check("accuracy_drop_pp", drop, bar_pp, passed, "<=", warning, (low, high))


def mcnemar_exact(reference_correct: np.ndarray, artifact_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact (binomial) test on paired correctness.

    ``b``: reference right, artifact wrong; ``c``: the reverse. Two-sided p-value of
    ``min(b, c)`` under Binomial(b + c, 1/2). A large p means the accuracy difference is
    indistinguishable from noise.
    """
    b = int(np.sum(reference_correct & ~artifact_correct))
    c = int(np.sum(~reference_correct & artifact_correct))
    n = b + c
    if n == 0:
        p_value = 1.0
    else:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
        p_value = min(1.0, 2 * tail / 2**n)  # exact integer arithmetic, one rounding
    return {"reference_only_correct": b, "artifact_only_correct": c, "p_value": p_value}


def measure(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray,
            class_names: tuple[str, ...], indices: np.ndarray | None = None) -> dict[str, Any]:
    """Every parity measure of ``outputs`` against ``reference`` on the same images."""
    if reference.shape != outputs.shape:
        raise ValueError(f"outputs have shape {outputs.shape}, reference {reference.shape}")
    labels = labels.astype(np.int64)
    indices = np.arange(len(labels)) if indices is None else indices
    reference_class = reference.argmax(axis=1)
    artifact_class = outputs.argmax(axis=1)
    reference_correct = reference_class == labels
    artifact_correct = artifact_class == labels
    difference = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    flipped = np.flatnonzero(reference_class != artifact_class)
    per_class = {}
    for label_index, label in enumerate(class_names):
        members = labels == label_index
        if members.any():
            per_class[label] = {
                "reference_accuracy": float(reference_correct[members].mean()),
                "artifact_accuracy": float(artifact_correct[members].mean()),
                "delta_pp": float(100 * (artifact_correct[members].mean()
                                         - reference_correct[members].mean())),
            }
    reference_accuracy = float(reference_correct.mean())
    accuracy = float(artifact_correct.mean())
    near_tie = near_ties(reference, difference)
    return {
        "images": int(len(labels)),
        "accuracy": accuracy,
        "reference_accuracy": reference_accuracy,
        "accuracy_drop_pp": 100 * (reference_accuracy - accuracy),
        "agreement": float((reference_class == artifact_class).mean()),
        "agreeing": int((reference_class == artifact_class).sum()),
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "flips": [
            {"index": int(indices[i]), "true": class_names[labels[i]],
             "reference": class_names[reference_class[i]],
             "artifact": class_names[artifact_class[i]], "near_tie": bool(near_tie[i])}
            for i in flipped
        ],
        "near_tie_flips": int(near_tie[flipped].sum()),
        "confident_flips": int((~near_tie[flipped]).sum()),
        "per_class": per_class,
        "mcnemar": mcnemar_exact(reference_correct, artifact_correct),
    }


def near_ties(reference: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """Per image: the reference's own top-2 margin is smaller than the artifact's error there
    (its largest |Δp| over classes). A flip on such an image is a near-tie that a perturbation
    of the artifact's size can flip; a flip on the others is a confident answer changed."""
    top2 = np.sort(reference.astype(np.float64), axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return np.asarray(margin < difference.max(axis=1))


def check(measures: dict[str, Any], bar: Bar) -> list[Check]:
    """Compare measures with a bar; returns every check, passed or not."""
    total = int(measures["images"])
    agreeing = int(measures.get("agreeing", round(measures["agreement"] * total)))
    checks = [agreement_check(agreeing, total, bar.min_agreement_percent)]
    if bar.max_abs_diff is not None:
        checks.append(Check("max_abs_diff", measures["max_abs_diff"], bar.max_abs_diff,
                            measures["max_abs_diff"] <= bar.max_abs_diff, "<="))
    else:
        checks.append(Check("max_abs_diff", measures["max_abs_diff"], None, True, "<="))
    mcnemar = measures["mcnemar"]
    checks.append(accuracy_drop_check(mcnemar["reference_only_correct"],
                                      mcnemar["artifact_only_correct"], total,
                                      bar.max_accuracy_drop_pp))
    return checks
