"""The results store's records (runs, models, windows) and their identities (ids, code version, fingerprints)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__


def utc_now() -> str:
    """ISO-8601 UTC time with microseconds (sortable as text)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC time plus 24 random bits): sortable and unique."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


_CODE_VERSION: str | None = None


def code_version() -> str:
    """``harness <version>`` plus the git commit when run from a checkout."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        ver = f"harness {__version__}"
        root = Path(__file__).resolve().parent.parent
        if (root / ".git").exists():
            try:
                head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                      capture_output=True, text=True, timeout=5, check=False).stdout.strip()
                if head:
                    ver += f" {head}"
            except (OSError, subprocess.SubprocessError):
                pass
        _CODE_VERSION = ver
    return _CODE_VERSION


@dataclass(frozen=True)
class RunRecord:
    """One run: where, with what, how (the plan as JSON)."""

    run_id: str
    device: str
    device_fingerprint: str
    fingerprint_json: str
    virtual: bool
    measures_energy: bool
    instrument: str
    plan_json: str
    code_version: str = field(default_factory=code_version)
    created_utc: str = field(default_factory=utc_now)


@dataclass(frozen=True)
class ModelRecord:
    """One model of a run: the base model (``level_pct`` 0) or a specialist."""

    run_id: str
    model_key: str
    level_pct: int
    classes: str
    method: str
    flops: int
    flops_pruned_pct: float
    model_hash: str
    artifact_hash: str
    artifact_path: str
    accuracy_pct: float | None = None


@dataclass(frozen=True)
class WindowRecord:
    """One measurement window (``kind`` ``inference`` or ``idle``), valid or invalid with a reason.

    ``time_ms`` is the mean wall-clock time per inference inside the window; ``energy_j`` the
    energy measured over the busy part (``busy_s``) of an inference window or the whole of an idle
    window; ``mean_power_w`` the mean power over that same span.  Energy keys are None where
    nothing measures energy.  ``latency_p50/p90/p99_ms`` summarise the window's timed inferences;
    ``load_ms``, ``first_inference_ms`` and ``warmup_ms`` what the runner did before them
    (:class:`harness.latency.Phases`); None where not known (schema version 3 added them).
    """

    run_id: str
    seq: int
    round_idx: int
    kind: str
    model_key: str
    status: str
    reason: str = ""
    t_start_mono_s: float | None = None
    duration_s: float | None = None
    n_inferences: int = 0
    busy_s: float | None = None
    time_ms: float | None = None
    energy_j: float | None = None
    mean_power_w: float | None = None
    temperature_c: float | None = None
    trace_hash: str = ""
    latencies_hash: str = ""
    model_hash: str = ""
    artifact_hash: str = ""
    device_fingerprint: str = ""
    instrument: str = ""
    code_version: str = field(default_factory=code_version)
    settings_json: str = "{}"
    created_utc: str = field(default_factory=utc_now)
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    load_ms: float | None = None
    first_inference_ms: float | None = None
    warmup_ms: float | None = None

    @property
    def valid(self) -> bool:
        return self.status == "valid"


@dataclass(frozen=True)
class RunSummary:
    """A run with its latest status and window counts (for ``harness runs``)."""

    run: RunRecord
    status: str
    n_models: int
    valid_windows: int
    invalid_windows: int


def run_from_row(cols: list[str], row: tuple) -> RunRecord:
    d = dict(zip(cols, row, strict=True))
    d["virtual"] = bool(d["virtual"])
    d["measures_energy"] = bool(d["measures_energy"])
    return RunRecord(**d)


def record_dict(rec: Any) -> dict[str, Any]:
    """A record as a plain dict (JSON-ready)."""
    return asdict(rec)


def fingerprint_id(fingerprint: dict[str, Any]) -> tuple[str, str]:
    """``(short id, canonical JSON)`` of a device fingerprint dict."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], text
