"""The sync signature: shell text, template, and finding it in noisy traces."""

from __future__ import annotations

import numpy as np
import pytest

from device import sync
from device.errors import MeasurementError
from device.power_model import PowerModelProfile, sample_current_a


def test_marker_command_is_dd_and_sleep_only():
    cmd = sync.marker_command("start")
    words = [w for part in cmd.split("; ") for w in part.split()[:1]]
    assert set(words) == {"dd", "sleep"}
    assert "count=40" in cmd and "count=80" in cmd and "bs=1000000" in cmd
    assert sync.marker_command("end") != cmd
    # a phone with a faster dd gets proportionally more blocks per burst
    assert "count=160" in sync.marker_command("start", dd_bytes_per_s=4e9)


def _trace(kind, t0, scale=1.0, rate=5000.0, noise=0.02, total=3.0, seed=0, extra=()):
    ev = [(0.0, 0.0)] + list(extra)
    for a, b in sync.marker_busy_intervals(kind, t0, scale):
        ev += [(a, 1.0), (b, 0.0)]
    ev.sort()
    tl_t, tl_b = np.array([e[0] for e in ev]), np.array([e[1] for e in ev])
    prof = PowerModelProfile(noise_current_a=noise)
    idx = np.arange(int(total * rate))
    return sample_current_a(prof, idx / rate, rate, tl_t, tl_b, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", ["start", "end"])
def test_find_marker_sub_millisecond(kind):
    t0 = 1.23456789
    cur = _trace(kind, t0, extra=[(0.3, 2.0), (0.8, 0.0)])
    m = sync.find_marker(cur, 5000.0, kind, expected_sync_s=t0 + 0.5, search_s=1.0)
    true = sync.marker_busy_intervals(kind, t0)
    truth = true[-1][1] if kind == "start" else true[0][0]
    assert abs(m.sync_point_s - truth) < 1e-3
    assert m.score > 0.9


def test_find_marker_unknown_dd_speed():
    t0 = 0.71
    cur = _trace("start", t0, scale=0.33)
    with pytest.raises(MeasurementError):
        sync.find_marker(cur, 5000.0, "start", min_score=0.9)
    m = sync.find_marker(cur, 5000.0, "start", busy_scales=sync.REAL_PHONE_SCALES)
    truth = sync.marker_busy_intervals("start", t0, 0.33)[-1][1]
    assert abs(m.sync_point_s - truth) < 1e-3 and m.busy_scale == pytest.approx(0.33, rel=0.08)


def test_no_marker_raises():
    rng = np.random.default_rng(1)
    with pytest.raises(MeasurementError, match="not found"):
        sync.find_marker(0.2 + rng.normal(0, 0.01, 10000), 5000.0, "start")
