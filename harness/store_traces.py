"""Raw traces: content-addressed compressed ``.npz`` arrays, verified on read; files beside a SQLite results
database (:class:`TraceStore`), or rows of the database on a server (:class:`DbTraceStore`)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from harness.errors import ArtifactError
from harness.store_errors import os_error


def _canonical_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


class TraceStore:
    """Content-addressed compressed array files: ``<root>/<h[:2]>/<h>.npz``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.npz"

    def put(self, arrays: dict[str, np.ndarray]) -> str:
        """Write (once) and return the sha256 of the arrays' canonical content."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        digest = _canonical_hash(arrays)
        p = self.path(digest)
        if p.is_file():
            return digest
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise os_error(exc, p) from None
        except BaseException:  # an interrupt: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> dict[str, np.ndarray]:
        """Read a trace back and check its hash; ArtifactError if missing or altered."""
        p = self.path(digest)
        if not p.is_file():
            raise ArtifactError(f"trace {digest[:12]} not found at {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/ValueError/OSError: a damaged file
            raise ArtifactError(f"trace file {p} is damaged ({exc})") from None
        if _canonical_hash(arrays) != digest:
            raise ArtifactError(f"trace file {p} does not match its hash (altered or damaged)")
        return arrays


class DbTraceStore(TraceStore):
    """The same content-addressed arrays, kept in the database's ``traces`` table (stores on a server, where
    every lab host writes and every reader reads the same traces).  ``put_blob(hash, bytes)`` stores once
    (an existing hash is kept: same hash, same content); ``get_blob(hash)`` returns the bytes or None."""

    def __init__(self, put_blob, get_blob, where: str):
        super().__init__(where)
        self._put_blob, self._get_blob, self.where = put_blob, get_blob, where

    def path(self, digest: str) -> Path:  # pragma: no cover - a server store has no trace files
        raise ArtifactError(f"trace {digest[:12]} is kept in the database {self.where}, not in a file")

    def put(self, arrays: dict[str, np.ndarray]) -> str:
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        digest = _canonical_hash(arrays)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        self._put_blob(digest, buf.getvalue())
        return digest

    def get(self, digest: str) -> dict[str, np.ndarray]:
        blob = self._get_blob(digest)
        if blob is None:
            raise ArtifactError(f"trace {digest[:12]} not found in {self.where}")
        try:
            with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/ValueError/OSError: damaged bytes
            raise ArtifactError(f"trace {digest[:12]} in {self.where} is damaged ({exc})") from None
        if _canonical_hash(arrays) != digest:
            raise ArtifactError(f"trace {digest[:12]} in {self.where} does not match its hash (altered or damaged)")
        return arrays
