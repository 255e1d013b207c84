"""Two runs compared model by model: the verdicts of ``harness compare`` and of the report's "earlier runs".

For every model in both runs and each metric (time, and energy when both runs measured it), a verdict for
run B against baseline run A from :func:`harness.verdict.compare_samples` (Mann-Whitney U on the per-window
values plus a minimum effect size).

What is judged is what the device reproduces between two runs of the same code, not what one run's CI
resolves.  Each metric's **common shift** is the median of the per-model effects: when every model moved
together, the device was faster or slower, not one model.

- **Virtual lab** (both runs virtual, at least :data:`MIN_MODELS_RELATIVE` models in common): each model is
  judged **against the other models of its round** (paired per round).  Every round measures every model, so
  a round's speed factor is the median over its models of value / run A's median of that model; each window's
  value is divided by its round's factor (in the comparison only: nothing stored changes), and the U test and
  a minimum effect of :data:`VIRTUAL_RELATIVE_THRESHOLD_PCT` judge the result.  The host's speed, which moves
  every model of a round together, cancels; a model that alone became slower or faster does not.  Why: the
  virtual phone is real ExecuTorch on a shared host whose speed changes from minute to minute: two consecutive
  default runs of the same plan and code differed by 6-12% in every model, all the same way, while each model
  against its round's others moved at most 5.6% (docs/run.md, "Comparing runs").  The common shift (median
  round factor of B over A's) is reported, never judged: on the virtual lab it cannot be told from the host's
  speed.  With fewer models in common the absolute values are judged with :data:`VIRTUAL_THRESHOLD_PCT`.
- **Other devices**: the absolute values, minimum effect :data:`DEFAULT_THRESHOLD_PCT` (a phone is its own
  machine; its run-to-run spread is not measured yet: set ``--threshold`` from two runs of your own).

``--threshold`` overrides the minimum effect of either mode.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from harness.tables import window_metrics
from harness.verdict import compare_samples

#: Minimum effect (% of the baseline median) on real devices and the host: absolute values.
DEFAULT_THRESHOLD_PCT = 2.0
#: Minimum effect of a model against its rounds' other models, two virtual-lab runs: above the 5.6% measured.
VIRTUAL_RELATIVE_THRESHOLD_PCT = 10.0
#: Minimum absolute effect, two virtual-lab runs with too few models for a common shift: above the 12% measured.
VIRTUAL_THRESHOLD_PCT = 15.0
#: Models in common needed for judging against the common shift (a median of two follows a changed model).
MIN_MODELS_RELATIVE = 3
#: A common shift at least this large (in %) gets a note.
COMMON_SHIFT_NOTE_PCT = 2.0


def comparison_mode(run_a, run_b, n_common: int) -> str:
    """``relative`` (each model against the common shift) or ``absolute`` (see the module doc)."""
    return "relative" if run_a.virtual and run_b.virtual and n_common >= MIN_MODELS_RELATIVE else "absolute"


def default_threshold_pct(run_a, run_b, mode: str) -> float:
    """The minimum effect when the user gave none (see the module doc)."""
    if not (run_a.virtual and run_b.virtual):
        return DEFAULT_THRESHOLD_PCT
    return VIRTUAL_RELATIVE_THRESHOLD_PCT if mode == "relative" else VIRTUAL_THRESHOLD_PCT


def _median_effect_pct(a: np.ndarray, b: np.ndarray) -> float:
    """(median B - median A) / median A in %, NaN without values or with a zero baseline."""
    if len(a) == 0 or len(b) == 0:
        return math.nan
    ma = float(np.median(a))
    return math.nan if ma == 0 else (float(np.median(b)) - ma) / abs(ma) * 100.0


def _relative_pct(effect_pct: float, shift_pct: float) -> float:
    """A model's change relative to the common shift, in %: (1 + effect) / (1 + shift) - 1."""
    if not (math.isfinite(effect_pct) and math.isfinite(shift_pct)) or shift_pct <= -100.0:
        return math.nan
    return ((1.0 + effect_pct / 100.0) / (1.0 + shift_pct / 100.0) - 1.0) * 100.0


def _valid(m: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """Valid finite per-window values of ``metric`` by model key."""
    out = {}
    for key in np.unique(m["model_key"]):
        v = m[metric][(m["model_key"] == key) & m["valid"]]
        out[str(key)] = v[np.isfinite(v)]
    return out


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


def _by_round(m: dict[str, np.ndarray], metric: str, keys: list[str]) -> np.ndarray:
    """Valid values of ``metric`` laid out rounds x ``keys`` (NaN where a round has no valid window)."""
    rounds = np.unique(m["round_idx"])
    out = np.full((len(rounds), len(keys)), np.nan)
    if not keys or len(rounds) == 0:
        return out
    names = np.asarray(keys)
    order = np.argsort(names)
    pos = np.minimum(np.searchsorted(names[order], m["model_key"]), len(keys) - 1)
    sel = (names[order][pos] == m["model_key"]) & np.asarray(m["valid"], bool)  # a known model, a valid window
    out[np.searchsorted(rounds, m["round_idx"][sel]), order[pos][sel]] = np.asarray(m[metric])[sel]
    return out


def round_factors(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each round's speed against ``ref`` (one value per model): the median over models of value / ref, NaN
    for a round with fewer than :data:`MIN_MODELS_RELATIVE` models measured (a median of two follows a changed
    model)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = values / ref[None, :]
    ratio[~np.isfinite(ratio)] = np.nan
    enough = np.sum(np.isfinite(ratio), axis=1) >= MIN_MODELS_RELATIVE
    g = np.full(len(values), np.nan)
    if enough.any():
        g[enough] = np.nanmedian(ratio[enough], axis=1)
    return g


def _relative(ma_: dict, mb_: dict, metric: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """Both runs' values of ``metric`` divided by their round's factor against run A's per-model medians
    (rounds x keys), and the common shift in %."""
    xa, xb = _by_round(ma_, metric, keys), _by_round(mb_, metric, keys)
    with warnings.catch_warnings():  # a model without a valid window in A: NaN, no "All-NaN slice" warning
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(xa, axis=0) if len(xa) else np.full(len(keys), np.nan)
    ga, gb = round_factors(xa, ref), round_factors(xb, ref)
    shift = math.nan
    if np.isfinite(ga).any() and np.isfinite(gb).any():
        shift = (float(np.nanmedian(gb)) / float(np.nanmedian(ga)) - 1.0) * 100.0
    return xa / ga[:, None], xb / gb[:, None], shift


def compare_runs(st, run_a: str, run_b: str, threshold_pct: float | None = None,
                 alpha: float = 0.05) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see ``harness compare --json``); ``threshold_pct`` None: the
    default of the comparison's mode (:func:`default_threshold_pct`)."""
    ra, rb = st.get_run(run_a), st.get_run(run_b)
    ma = {m.model_key: m for m in st.models(ra.run_id)}
    mb = {m.model_key: m for m in st.models(rb.run_id)}
    common = sorted(set(ma) & set(mb), key=lambda k: ma[k].level_pct)
    mode = comparison_mode(ra, rb, len(common))
    threshold_default = threshold_pct is None
    if threshold_pct is None:
        threshold_pct = default_threshold_pct(ra, rb, mode)
    wa, wb = window_metrics(st.windows(ra.run_id)), window_metrics(st.windows(rb.run_id))
    metrics = ["time_ms"] + (["energy_mj"] if ra.measures_energy and rb.measures_energy else [])
    out, shifts = [], {}
    for metric in metrics:
        va, vb = _valid(wa, metric), _valid(wb, metric)
        empty = np.zeros(0)
        effects = {k: _median_effect_pct(va.get(k, empty), vb.get(k, empty)) for k in common}
        if mode == "relative":
            na, nb, shift = _relative(wa, wb, metric, common)
        else:
            finite = [e for e in effects.values() if math.isfinite(e)]
            shift = float(np.median(finite)) if finite else math.nan
        shifts[metric] = _none_if_nan(shift)
        for j, key in enumerate(common):
            if mode == "relative":
                v = compare_samples(na[:, j], nb[:, j], threshold_pct, alpha,
                                    samples=f"valid windows in rounds with >= {MIN_MODELS_RELATIVE} valid models")
                rel = v.effect_pct
                judged = {**v.as_dict(), "reason": f"against its round's other models: {v.reason}"}
            else:
                judged = compare_samples(va.get(key, empty), vb.get(key, empty), threshold_pct, alpha).as_dict()
                rel = _relative_pct(effects[key], shift)
            out.append({"model": key, "level": ma[key].level_pct, "metric": metric, **judged,
                        "effect_pct": effects[key], "effect_vs_common_pct": _none_if_nan(rel),
                        "same_artifact": ma[key].artifact_hash == mb[key].artifact_hash})
    notes = []
    if ra.device_fingerprint != rb.device_fingerprint:
        notes.append(f"different devices: {ra.device} ({ra.device_fingerprint}) vs {rb.device} ({rb.device_fingerprint})")
    only = sorted(set(ma) ^ set(mb))
    if only:
        notes.append(f"models in only one run: {', '.join(only)}")
    for metric, shift in shifts.items():
        if shift is not None and abs(shift) >= COMMON_SHIFT_NOTE_PCT and len(common) >= 2:
            judged = ("each model is judged against it" if mode == "relative"
                      else "judged as part of each model's effect")
            notes.append(f"{metric}: the models moved together by a median {shift:+.1f}% (the device's speed "
                         f"between the runs, not one model; {judged})")
    counts = {k: sum(1 for c in out if c["verdict"] == k) for k in ("improved", "regressed", "same", "unknown")}
    return {"run_a": ra.run_id, "run_b": rb.run_id, "mode": mode, "threshold_pct": threshold_pct,
            "threshold_default": threshold_default, "alpha": alpha, "comparisons": out,
            "common_shift_pct": shifts, "counts": counts, "regressed": counts["regressed"] > 0, "notes": notes}
