"""Checked pushes over the real adb-shell client: temp name, size + hash check, rename, retries."""

from __future__ import annotations

import hashlib
import os

import pytest

from device.adb import AdbOptions, connect, ensure_adb_key
from device.errors import DeviceError, InputError
from device.push import checked_push, detect_hash_tool
from device.virtual_phone import FaultConfig, VirtualPhone


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return ensure_adb_key(tmp_path_factory.mktemp("keys") / "adbkey")


def _phone_and_dev(tmp_path, key, profile):
    vp = VirtualPhone(tmp_path / profile, profile=profile, authorized_keys=(f"{key}.pub",)).start()
    dev = connect(vp.address, AdbOptions(key_path=str(key), retries=2, retry_backoff_s=0.05))
    return vp, dev


@pytest.fixture()
def model(tmp_path):
    p = tmp_path / "model.pte"
    p.write_bytes(os.urandom(2_000_000))
    return p


def _files(vp, folder="/data/local/tmp/harness"):
    host = vp.state.sandbox.host_path(folder)
    return sorted(p.name for p in host.iterdir()) if host.is_dir() else []


@pytest.mark.parametrize("profile, algo", [("virtual-nexus4", "md5"), ("virtual-pixel6", "sha256")])
def test_hash_tool_fallback_and_checked_push(tmp_path, key, model, profile, algo):
    vp, dev = _phone_and_dev(tmp_path, key, profile)
    try:
        assert detect_hash_tool(dev)[1] == algo  # Android 5.1 toolbox has no sha256sum
        res = checked_push(dev, model, "/data/local/tmp/harness/m.pte")
        assert (res.hash_algo, res.attempts, res.skipped) == (algo, 1, False)
        assert res.hash_hex == hashlib.new(algo, model.read_bytes()).hexdigest()
        assert vp.state.sandbox.host_path("/data/local/tmp/harness/m.pte").read_bytes() == model.read_bytes()
        assert _files(vp) == ["m.pte"]  # no temporary left behind
        again = checked_push(dev, model, "/data/local/tmp/harness/m.pte")
        assert again.skipped and again.attempts == 0
    finally:
        dev.close()
        vp.stop()


def test_link_dropped_mid_push_is_retried_and_nothing_half_pushed_is_used(tmp_path, key, model):
    vp, dev = _phone_and_dev(tmp_path, key, "virtual-nexus4")
    try:
        dev.shell("true")
        vp.set_faults(FaultConfig(drop_after_bytes=1_000_000, drops=1))
        res = checked_push(dev, model, "/data/local/tmp/harness/m.pte")
        assert res.attempts >= 1
        assert vp.state.sandbox.host_path("/data/local/tmp/harness/m.pte").read_bytes() == model.read_bytes()
        assert _files(vp) == ["m.pte"]
    finally:
        dev.close()
        vp.stop()


def test_a_phone_that_keeps_dropping_gives_a_clear_error_and_no_file(tmp_path, key, model):
    vp, dev = _phone_and_dev(tmp_path, key, "virtual-nexus4")
    try:
        dev.run(["mkdir", "-p", "/data/local/tmp/harness"])
        vp.set_faults(FaultConfig(drop_after_bytes=500_000, drops=1000))
        with pytest.raises(DeviceError, match="attempt"):
            checked_push(dev, model, "/data/local/tmp/harness/m.pte", retries=1)
        vp.set_faults(FaultConfig())
        assert _files(vp) == []  # neither the model nor a temporary
    finally:
        dev.close()
        vp.stop()


def test_corrupted_transfer_is_detected_by_the_hash(tmp_path, key, model):
    """A phone whose storage flips a byte: the size matches, the hash does not; never renamed into place."""
    vp, dev = _phone_and_dev(tmp_path, key, "virtual-pixel6")
    try:
        vp.set_faults(FaultConfig(corrupt_push=True))
        with pytest.raises(DeviceError, match="sha256 mismatch"):
            checked_push(dev, model, "/data/local/tmp/harness/m.pte", retries=1)
        assert _files(vp) == []
    finally:
        dev.close()
        vp.stop()


def test_bad_push_arguments(tmp_path, key, model):
    vp, dev = _phone_and_dev(tmp_path, key, "virtual-nexus4")
    try:
        with pytest.raises(InputError, match="no such file"):
            checked_push(dev, tmp_path / "missing.pte", "/data/local/tmp/x.pte")
        with pytest.raises(InputError, match="absolute"):
            checked_push(dev, model, "relative/x.pte")
    finally:
        dev.close()
        vp.stop()
