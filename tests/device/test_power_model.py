"""The power model: busy timeline -> current, integrated exactly per sample."""

from __future__ import annotations

import numpy as np
import pytest

from device.errors import DataError
from device.power_model import (
    PowerModelProfile,
    TimelineFollower,
    busy_integral,
    expected_energy_j,
    read_busy_timeline,
    sample_current_a,
    write_busy_timeline,
)


def test_busy_integral_exact():
    t = np.array([1.0, 2.0, 2.5])
    b = np.array([2.0, 0.0, 8.0])
    got = busy_integral(np.array([0.0, 1.5, 2.0, 2.25, 3.0]), t, b, cores=4)
    np.testing.assert_allclose(got, [0.0, 1.0, 2.0, 2.0, 4.0])


def test_samples_integrate_to_exact_energy():
    prof = PowerModelProfile(noise_current_a=0.0)
    t = np.array([0.0, 0.10003, 0.30007])
    b = np.array([0.0, 3.0, 0.0])
    rate = 5000.0
    idx = np.arange(0, 2500)
    cur = sample_current_a(prof, idx / rate, rate, t, b)
    e = float(np.sum(cur * prof.supply_voltage_v) / rate)
    assert e == pytest.approx(expected_energy_j(prof, 0.0, 0.5, t, b), rel=1e-12)
    # an edge inside a sample shows as a fractional level
    k = int(0.10003 * rate)
    assert prof.power_w(np.array([0]))[0] < cur[k] * prof.supply_voltage_v < prof.power_w(np.array([3]))[0]


def test_profile_validation():
    with pytest.raises(DataError):
        PowerModelProfile(supply_voltage_v=-1)


def test_timeline_files(tmp_path):
    f = tmp_path / "busy_timeline.tsv"
    assert read_busy_timeline(f)[0].size == 0
    write_busy_timeline(f, [(1.0, 0), (2.0, 4)])
    fol = TimelineFollower(f)
    t, b = fol.poll()
    assert list(t) == [1.0, 2.0] and list(b) == [0, 4]
    with open(f, "a") as fh:
        fh.write("3.0\t1\n4.0\t")  # a line still being written is not read
    t, b = fol.poll()
    assert list(t) == [1.0, 2.0, 3.0]
    assert list(read_busy_timeline(f)[0]) == [1.0, 2.0, 3.0]
    f.write_text("# t_mono_s\tbusy_threads\n1.0\tlots\n")
    with pytest.raises(DataError, match=":2:"):
        read_busy_timeline(f)
