"""What every power-trace reader yields: contiguous chunks of samples, and the limits readers share."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_CHUNK_SAMPLES = 1 << 16  # 64 Ki samples: ~2 MB of working memory, fastest on small caches
#: Highest sample rate a trace may claim (the Monsoon HVPM samples at 5 kHz).
MAX_RATE_HZ = 1e7


class TraceChunk(NamedTuple):
    """Contiguous samples: index of the first one, current (A), voltage (V), calibration, USB-channel current."""

    start_index: int
    current_a: np.ndarray
    voltage_v: np.ndarray
    calibrated: bool = True
    usb_current_a: float = float("nan")
