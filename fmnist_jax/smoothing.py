"""TensorBoard's smoothing of a logged series, for the figures and the claims; numpy only (no
matplotlib), so that checking a claim draws nothing."""

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_SMOOTHING = 0.6  # TensorBoard's default slider position


def tensorboard_smooth(values: Sequence[float], weight: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Smooths a series exactly as TensorBoard's scalar dashboard does.

    A debiased exponential moving average started at 0: `last = last * w + (1 - w) * v`, shown
    as `last / (1 - w ** n)` where n counts the finite values seen so far. Non-finite values pass
    through unchanged and do not enter the average. As in TensorBoard, the weight is clamped to
    [0, 1] (a non-finite weight counts as 0) and a constant series is returned unchanged.
    """
    values = np.asarray(values, dtype=np.float64)
    weight = min(max(weight, 0.0), 1.0) if math.isfinite(weight) else 0.0
    if values.size == 0 or np.all(values == values[0]):
        return values.copy()
    smoothed = values.copy()
    last, num_accum = 0.0, 0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            continue
        last = last * weight + (1.0 - weight) * value
        num_accum += 1
        debias = 1.0 if weight == 1.0 else 1.0 - weight**num_accum
        smoothed[i] = last / debias
    return smoothed
