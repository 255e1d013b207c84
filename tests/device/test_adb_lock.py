"""One harness process per device: the device lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from device.errors import DeviceError
from device.lock import DeviceLock


def test_second_holder_is_refused_with_the_pid(tmp_path):
    with DeviceLock("127.0.0.1:5555", directory=tmp_path) as first:
        assert first.held
        with pytest.raises(DeviceError, match=f"in use by pid {os.getpid()}"):
            DeviceLock("127.0.0.1:5555", directory=tmp_path).acquire()
        DeviceLock("other-phone", directory=tmp_path).acquire().release()  # other devices are free
    DeviceLock("127.0.0.1:5555", directory=tmp_path).acquire().release()  # free again after release


def test_lock_of_a_dead_process_is_free(tmp_path):
    code = ("import sys; from device.lock import DeviceLock; "
            f"DeviceLock('phone', directory=r'{tmp_path}').acquire(); sys.exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=os.getcwd())
    lock = DeviceLock("phone", directory=tmp_path).acquire()
    assert lock.held
    lock.release()


def test_waits_up_to_timeout(tmp_path):
    import time

    with DeviceLock("p", directory=tmp_path):
        t0 = time.monotonic()
        with pytest.raises(DeviceError):
            DeviceLock("p", directory=tmp_path, timeout_s=0.3).acquire()
        assert 0.3 <= time.monotonic() - t0 < 2
