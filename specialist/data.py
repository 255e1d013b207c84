"""CIFAR-10 loading: the project's ``test.npz``/``calib.npz`` layout, the official python tarball, download.

Images are uint8 NHWC RGB; labels uint8.  ``exact`` marks bit-exact images (see the data README):
compare like with like.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specialist.errors import DataError

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
#: Calibration images per class taken from the official training batches (first N of each class).
CALIB_PER_CLASS = 500


@dataclass(frozen=True)
class Split:
    """One split of the data set."""

    x: np.ndarray  # uint8 [N, 32, 32, 3]
    y: np.ndarray  # uint8 [N]
    exact: np.ndarray  # bool [N]
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def select(self, classes, per_class: int | None = None, exact_only: bool = False) -> Split:
        """Rows of the given classes (first ``per_class`` of each, in file order)."""
        cls = np.asarray(list(classes))
        mask = np.isin(self.y, cls)
        if exact_only:
            mask &= self.exact
        idx = np.flatnonzero(mask)
        if per_class is not None:
            keep = []
            for c in cls:
                keep.append(idx[self.y[idx] == c][:per_class])
            idx = np.sort(np.concatenate(keep)) if keep else idx[:0]
        return Split(self.x[idx], self.y[idx], self.exact[idx], self.source)


def candidate_data_dirs() -> list[Path]:
    """Where data is looked for when no ``--data`` is given, in order."""
    out = []
    if os.environ.get("HARNESS_DATA"):
        out.append(Path(os.environ["HARNESS_DATA"]))
    here = Path(__file__).resolve().parent.parent
    out += [
        Path.cwd() / "data" / "cifar10",
        here.parent / "shared" / "data" / "cifar10",
        Path.cwd().parent / "shared" / "data" / "cifar10",
        Path.home() / ".cache" / "harness" / "cifar10",
    ]
    return out


def resolve_data_dir(data: str | Path | None = None) -> Path:
    """``--data`` if given, else ``$HARNESS_DATA``, else the first default location that holds data."""
    if data is not None:
        p = Path(data)
        if not p.is_dir():
            raise DataError(f"data directory {p} does not exist; pass --data DIR with test.npz/calib.npz "
                            f"or {CIFAR10_TARBALL}")
        return p
    for p in candidate_data_dirs():
        if p.is_dir() and _layout(p) is not None:
            return p
    raise DataError("no CIFAR-10 data found; pass --data DIR (test.npz + calib.npz, or the official "
                    f"{CIFAR10_TARBALL}), set HARNESS_DATA, or run 'harness data download'")


def _layout(p: Path) -> str | None:
    if (p / "test.npz").is_file() and (p / "calib.npz").is_file():
        return "npz"
    if (p / CIFAR10_DIR / "test_batch").is_file():
        return "official-dir"
    if (p / "test_batch").is_file() and (p / "data_batch_1").is_file():
        return "official-flat"
    if (p / CIFAR10_TARBALL).is_file():
        return "official-tar"
    return None


def _load_npz_split(path: Path) -> Split:
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in ("x", "y"):
                if key not in z.files:
                    raise DataError(f"data file {path} has no array {key!r}; expected x, y, exact")
            x, y = z["x"], z["y"]
            exact = z["exact"].astype(bool) if "exact" in z.files else np.ones(len(y), bool)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"data file {path} is truncated or not a NumPy .npz archive ({exc})") from None
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(y) != len(x):
        raise DataError(f"data file {path}: x has shape {x.shape} {x.dtype}, expected uint8 [N,32,32,3]")
    return Split(x, y.astype(np.uint8), exact, str(path))


def _unpickle_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    # The official batches are Python pickles of plain dicts of bytes/lists/ndarrays.  Restrict the
    # unpickler to numpy's array reconstruction so a hostile file cannot run code.
    class _Safe(pickle.Unpickler):
        def find_class(self, module, cls):
            if (module, cls) in {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                                 ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct")}:
                return super().find_class(module, cls)
            raise pickle.UnpicklingError(f"{name}: refusing to load {module}.{cls}")

    import io

    try:
        d = _Safe(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # corrupt pickle: many exception types
        raise DataError(f"CIFAR-10 batch {name} is corrupt ({exc})") from None
    data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(d[b"labels"], dtype=np.uint8)
    return np.ascontiguousarray(data), labels


def _official_batches(p: Path, layout: str, names: list[str]) -> dict[str, bytes]:
    if layout == "official-tar":
        tar_path = p / CIFAR10_TARBALL
        out = {}
        try:
            with tarfile.open(tar_path, "r:gz") as tf:
                for n in names:
                    m = tf.getmember(f"{CIFAR10_DIR}/{n}")
                    fh = tf.extractfile(m)
                    if fh is None:
                        raise DataError(f"{tar_path}: {n} is not a file")
                    out[n] = fh.read()
        except (tarfile.TarError, KeyError, OSError, EOFError) as exc:
            raise DataError(f"{tar_path} is not a complete CIFAR-10 python tarball ({exc})") from None
        return out
    base = p / CIFAR10_DIR if layout == "official-dir" else p
    out = {}
    for n in names:
        f = base / n
        if not f.is_file():
            raise DataError(f"data directory {base} lacks {n}; expected the official CIFAR-10 python batches")
        out[n] = f.read_bytes()
    return out


def load_split(split: str, data: str | Path | None = None) -> Split:
    """Load ``"test"`` or ``"calib"`` from a data directory (see :func:`resolve_data_dir`)."""
    if split not in ("test", "calib"):
        raise ValueError(split)
    p = resolve_data_dir(data)
    layout = _layout(p)
    if layout is None:
        raise DataError(f"data directory {p} has neither test.npz+calib.npz nor the official "
                        f"{CIFAR10_TARBALL} / {CIFAR10_DIR}/; pass --data DIR with one of them")
    if layout == "npz":
        return _load_npz_split(p / f"{split}.npz")
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    raw = _official_batches(p, layout, names)
    if split == "test":
        x, y = _unpickle_batch(raw["test_batch"], "test_batch")
        return Split(x, y, np.ones(len(y), bool), str(p))
    xs, ys = zip(*(_unpickle_batch(raw[f"data_batch_{i}"], f"data_batch_{i}") for i in range(1, 6)),
                 strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    idx = np.concatenate([np.flatnonzero(y == c)[:CALIB_PER_CLASS] for c in range(10)])
    idx.sort()
    return Split(x[idx], y[idx], np.ones(len(idx), bool), str(p))


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(dest: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Download the official tarball into ``dest`` (via a temporary name), check its md5, return its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / CIFAR10_TARBALL
    if final.is_file() and md5_file(final) == md5:
        log.info("already downloaded: %s", final)
        return final
    tmp = dest / (CIFAR10_TARBALL + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:  # noqa: S310
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                fh.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed ({exc}); fetch {CIFAR10_TARBALL} by hand into {dest}") from None
    got = md5_file(tmp)
    if got != md5:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} has md5 {got}, expected {md5}; nothing was kept")
    os.replace(tmp, final)
    return final
