"""Probes of ``recon`` variants that replace one of its steps from outside (session 10, all rejected; the
results are in docs/methods.md, "Session 10").  Each patches ``specialist.recon`` in this process only and then
runs ``bench_recon_trial.py`` (same subsets, builds and scoring; its other options pass through):

    python benchmarks/probes/probe_recon.py two_pass --level 50
    python benchmarks/probes/probe_recon.py image_fit --rho 0.1 --level 50
    python benchmarks/probes/probe_recon.py mixup --frac 0.5 --level 50

* ``two_pass``: build once, then again with each layer's selection weighting only the outputs of the next layer
  that the first build kept (the next layer's dropped outputs stop counting).
* ``image_fit``: after the ReLU-aware rounds of CCCP6, two more rounds that fit each class score itself (the
  mean over positions of the ReLU, linearised at the current fit) by ridge least squares over images, pulled
  towards the position-level fit by ``--rho`` x the mean diagonal.
* ``mixup``: ``--frac`` x as many blends of two random calibration images (or mirror images) added to them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_recon_trial  # noqa: E402

from specialist import recon  # noqa: E402
from specialist.model import LAYER_NAMES, PRUNABLE  # noqa: E402


def install_two_pass() -> None:
    """Patch :func:`specialist.recon.reconstruct` into the two-pass variant."""
    rec, factor = recon.reconstruct, recon.next_layer_factor
    masks: list[np.ndarray | None] = []

    def masked_factor(w_next, ow):
        mask = masks.pop(0) if masks else None
        if mask is not None:
            ow = (np.ones(w_next.shape[0]) if ow is None else np.asarray(ow, np.float64)) * mask
        return factor(w_next, ow)

    def two_pass(base, classes, counts, images, *args, **kwargs):
        _, kept = rec(base, classes, counts, images, *args, **{**kwargs, "scores_out": None})
        for layer in PRUNABLE:
            if counts.get(layer, 0) <= 0:
                continue
            nxt = LAYER_NAMES[LAYER_NAMES.index(layer) + 1]
            mask = None
            if nxt in PRUNABLE and counts.get(nxt, 0) > 0:
                mask = np.zeros(base.weights[nxt].shape[0])
                mask[kept[nxt]] = 1.0
            masks.append(mask)
        return rec(base, classes, counts, images, *args, **kwargs)

    recon.next_layer_factor = masked_factor
    recon.reconstruct = two_pass


def install_image_fit(rho: float, rounds: int = 2) -> None:
    """Patch :func:`specialist.recon.relu_refit` to add image-level rounds on the class scores."""
    relu_refit = recon.relu_refit

    def image_fit(xs, z, w, const, ridge, iters, image_weight=None):
        w, const = relu_refit(xs, z, w, const, ridge, iters, image_weight)
        n, k, h, wd = xs.shape
        p = h * wd
        x = xs.permute(0, 2, 3, 1).reshape(n, p, k).double()
        zz = z.reshape(n, z.shape[1], -1).double()
        c = const.reshape(w.shape[0], -1).astype(np.float64).copy()
        w = w.astype(np.float64).copy()
        for _ in range(rounds):
            for o in range(w.shape[0]):
                target = torch.relu(zz[:, o]).mean(1)  # the original class score per image
                on = ((x @ torch.from_numpy(w[o]) + torch.from_numpy(c[o])[None]) > 0).double()  # [N, P]
                feats = torch.cat([(on[..., None] * x).sum(1) / p, on / p], dim=1)  # score = feats @ (w, c)
                prior = torch.from_numpy(np.concatenate([w[o], c[o]]))
                g = feats.T @ feats / n
                lam = rho * float(torch.trace(g)) / g.shape[0]
                sol = torch.linalg.solve(g + lam * torch.eye(g.shape[0], dtype=torch.float64),
                                         feats.T @ target / n + lam * prior)
                w[o], c[o] = sol[:k].numpy(), sol[k:].numpy()
        return w, c.reshape(w.shape[0], h, wd)

    recon.relu_refit = image_fit


def install_mixup(frac: float, low: float = 0.25, seed: int = 0) -> None:
    """Patch the calibration images of ``recon`` to gain ``frac`` x as many blends ``lam a + (1 - lam) b`` of two
    random calibration images (or mirror images), ``lam`` uniform in [low, 1 - low]: images near the original
    network's decision between the target classes, whose outputs the refit then reproduces too."""
    augment = recon.augment_images

    def with_blends(images, *args, **kwargs):
        out = augment(images, *args, **kwargs)
        rng = np.random.default_rng(seed)
        m = int(round(frac * len(out)))
        a, b = rng.integers(0, len(out), m), rng.integers(0, len(out), m)
        lam = rng.uniform(low, 1.0 - low, m).astype(np.float32)[:, None, None, None]
        return np.concatenate([out, lam * out[a] + (1.0 - lam) * out[b]]).astype(np.float32)

    recon.augment_images = with_blends


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", choices=("two_pass", "image_fit", "mixup"))
    ap.add_argument("--frac", type=float, default=0.5, help="mixup: blends per calibration image")
    ap.add_argument("--rho", type=float, default=0.1, help="image_fit: ridge towards the position-level fit")
    args, rest = ap.parse_known_args(argv)
    if args.probe == "two_pass":
        install_two_pass()
    elif args.probe == "mixup":
        install_mixup(args.frac)
    else:
        install_image_fit(args.rho)
    return bench_recon_trial.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
