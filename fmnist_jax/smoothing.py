"""TensorBoard's smoothing of a logged series, for the figures and the claims; numpy only (no
matplotlib), so that checking a claim draws nothing."""

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_SMOOTHING = 0.6  # TensorBoard's default slider position


def tensorboard_smooth(values: Sequence[float], weight: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """TensorBoard's debiased moving average from 0, `last / (1 - w ** n)` over the n finite
    values so far; non-finite values pass through, the weight is clamped to [0, 1] (non-finite:
    0) and a constant series is returned unchanged, as TensorBoard does."""
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
