"""CIFAR-10 loading: our npz layout, the official python tarball (built here in its real format), download + md5."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from specialist import data
from specialist.errors import DataError


def make_official_tarball(path, n_per_batch=30, seed=0):
    """A miniature cifar-10-python.tar.gz in the official layout (pickled dicts of bytes keys)."""
    rng = np.random.default_rng(seed)
    truth = {}
    with tarfile.open(path, "w:gz") as tf:
        for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
            x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x,
                                 b"filenames": [b"f"] * n_per_batch})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
            truth[name] = (x, np.array(y, np.uint8))
    return truth


def test_official_tarball_layout(tmp_path):
    truth = make_official_tarball(tmp_path / data.CIFAR10_TARBALL)
    test = data.load_split("test", tmp_path)
    x, y = truth["test_batch"]
    np.testing.assert_array_equal(test.y, y)
    np.testing.assert_array_equal(test.x[3], x[3].reshape(3, 32, 32).transpose(1, 2, 0))
    assert test.exact.all()
    calib = data.load_split("calib", tmp_path)
    assert len(calib) == 150  # every training image is among the first 500 of its class here


def test_unpacked_official_dir(tmp_path):
    tar = tmp_path / "t.tar.gz"
    make_official_tarball(tar)
    with tarfile.open(tar) as tf:
        tf.extractall(tmp_path, filter="data")
    assert len(data.load_split("test", tmp_path)) == 30


def test_hostile_pickle_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DataError, match="corrupt|refusing"):
        data.load_split("test", tmp_path)


def test_download_checks_md5(tmp_path):
    src = tmp_path / "src" / data.CIFAR10_TARBALL
    src.parent.mkdir()
    make_official_tarball(src)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    got = data.download_cifar10(dest, url=src.as_uri(), md5=md5)
    assert got.is_file() and len(data.load_split("test", dest)) == 30
    with pytest.raises(DataError, match="md5"):
        data.download_cifar10(tmp_path / "dest2", url=src.as_uri(), md5="0" * 32)
    assert not any((tmp_path / "dest2").iterdir())  # nothing kept


def test_npz_layout_and_selection(data_dir):
    test = data.load_split("test", data_dir)
    assert len(test) == 10_000 and test.exact.sum() == 1000
    sub = test.select([3, 5], per_class=7)
    assert len(sub) == 14 and set(sub.y.tolist()) == {3, 5}
    assert test.select([1], exact_only=True).exact.all()


def test_env_variable(tmp_path, monkeypatch):
    make_official_tarball(tmp_path / data.CIFAR10_TARBALL)
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
