"""Calibration-driven sequential reconstruction (``recon``): closed forms on synthetic data, exact answers on a
tiny random NIN, and the preset on the shipped NIN (same FLOPs as ``best``, smaller reconstruction error)."""

import numpy as np
import pytest
import torch

from specialist.allocation import ridge_lambda
from specialist.errors import UsageError
from specialist.model import LAYER_NAMES, NIN_LAYERS, NinNet, weights_from_arrays
from specialist.recon import reconstruct, refit_coefficients, selection_order


def _moments(xs, xo):
    xs, xo = xs - xs.mean(0), xo - xo.mean(0)
    return xs.T @ xs / len(xs), xs.T @ xo / len(xs)


def test_refit_matches_the_ridge_closed_form():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(500, 7))
    xo = xs @ rng.normal(size=(7, 5)) + 0.1 * rng.normal(size=(500, 5))
    g, c = _moments(xs, xo)
    kept = np.array([0, 2, 3, 6])
    a = refit_coefficients(g, c, kept, ridge=0.1)
    lam = 0.1 * np.trace(g) / 7 + 1e-12
    xk = xs[:, kept] - xs[:, kept].mean(0)
    yc = xo - xo.mean(0)
    # normal equations of min ||yc - xk A^T||^2 / n + lam ||A||^2
    want = np.linalg.solve(xk.T @ xk / 500 + lam * np.eye(4), xk.T @ yc / 500).T
    np.testing.assert_allclose(a, want, rtol=1e-10, atol=1e-12)


def test_refit_is_the_identity_when_nothing_changed_or_went():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 6))
    g, c = _moments(x, x)
    np.testing.assert_allclose(refit_coefficients(g, c, np.arange(6), ridge=0.0), np.eye(6), atol=1e-9)


def _explained(g, b, kept, lam):
    return float(np.trace(b[kept].T @ np.linalg.solve(g[np.ix_(kept, kept)] + lam * np.eye(len(kept)), b[kept])))


def test_selection_order_is_the_greedy_of_the_refitted_objective():
    """Brute force: each step drops the channel whose loss keeps the most of the consumer's original
    pre-activations explained (ridge least squares from the specialist's remaining channels)."""
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    xo = xs + 0.5 * rng.normal(size=(400, 6))  # the original network's activations differ from the specialist's
    g, c = _moments(xs, xo)
    wf = rng.normal(size=(6, 9))
    ridge = 0.05
    lam = ridge_lambda(g, ridge)
    b = c @ wf
    alive, want = list(range(6)), []
    while len(alive) > 1:
        best = max(alive, key=lambda j: _explained(g, b, [k for k in alive if k != j], lam))
        want.append(best)
        alive.remove(best)
    got = selection_order(g, c, wf, ridge)
    assert list(got[:5]) == want


def _tiny_nin(seed=0, width=8):
    """A NIN with every hidden layer ``width`` channels wide and random (mostly alive) units."""
    rng = np.random.default_rng(seed)
    arrays, prev = {}, 3
    for spec in NIN_LAYERS:
        out = 10 if spec.name == "CCCP6" else width
        fan_in = prev * spec.kernel * spec.kernel
        arrays[f"{spec.name}.weight"] = (rng.normal(size=(out, prev, spec.kernel, spec.kernel))
                                         * np.sqrt(2.0 / fan_in)).astype(np.float32)
        arrays[f"{spec.name}.bias"] = (0.1 + 0.05 * rng.normal(size=out)).astype(np.float32)
        prev = out
    arrays["input.mean"] = np.zeros(3, np.float32)
    arrays["input.std"] = np.ones(3, np.float32)
    return arrays


def _pre_scores(w, x):
    with torch.no_grad():
        return NinNet(w)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("patch_samples", [0, 64])
def test_nothing_pruned_reproduces_the_original_outputs(patch_samples):
    """Channel-level refit (A = I) and patch refit of the k x k consumers (W' = W) both give back the original."""
    base = weights_from_arrays(_tiny_nin(seed=1))
    x = np.random.default_rng(3).normal(size=(16, 3, 32, 32)).astype(np.float32)
    spec, kept = reconstruct(base, [1, 4, 7], {}, x, ridge=1e-10, patch_samples=patch_samples)
    assert kept["CCCP6"] == [1, 4, 7] and kept["CONV2"] == list(range(8))
    np.testing.assert_allclose(_pre_scores(spec, x), _pre_scores(base, x)[:, [1, 4, 7]], rtol=1e-3, atol=1e-4)


def test_a_duplicated_channel_is_pruned_and_absorbed_exactly():
    arrays = _tiny_nin(seed=1)  # every unit alive on these images
    # CCCP5's channel 5 is an exact copy of channel 2: removing one of them loses nothing after the refit
    for key in ("CCCP5.weight", "CCCP5.bias"):
        arrays[key][5] = arrays[key][2]
    base = weights_from_arrays(arrays)
    x = np.random.default_rng(5).normal(size=(16, 3, 32, 32)).astype(np.float32)
    spec, kept = reconstruct(base, list(range(10)), {"CCCP5": 1}, x, ridge=1e-10)
    assert len(kept["CCCP5"]) == 7 and ({2, 5} - set(kept["CCCP5"]))
    assert spec.weights["CCCP6"].shape[1] == 7
    np.testing.assert_allclose(_pre_scores(spec, x), _pre_scores(base, x), rtol=1e-3, atol=1e-4)


def test_bias_fold_has_no_constants():
    base = weights_from_arrays(_tiny_nin(seed=6))
    x = np.random.default_rng(7).normal(size=(8, 3, 32, 32)).astype(np.float32)
    spec, kept = reconstruct(base, [0, 1], {"CONV2": 3, "CCCP4": 2}, x, ridge=1e-2, fold="bias")
    assert spec.consts == {} and len(kept["CONV2"]) == 5 and len(kept["CCCP4"]) == 6
    exact, _ = reconstruct(base, [0, 1], {"CONV2": 3, "CCCP4": 2}, x, ridge=1e-2)
    # every prunable layer's consumer is refit (drift corrected even where nothing went)
    assert set(exact.consts) == {"CONV2", "CCCP3", "CCCP4", "CONV3", "CCCP5", "CCCP6"}
    assert [exact.weights[n].shape[0] for n in LAYER_NAMES][-1] == 2


def test_calib_per_class_is_validated():
    from specialist.build import with_overrides
    from specialist.methods import PRESETS

    with pytest.raises(UsageError, match="calib_per_class"):
        with_overrides(PRESETS["recon"], {"calib_per_class": -1})


@pytest.mark.usefixtures("one_torch_thread")
def test_recon_preset_same_flops_as_best_and_smaller_error(base_weights, data_dir):
    """On the shipped NIN: recon spends exactly the FLOPs of best with recon's allocation settings (per-layer
    cap, layer weights; at or under the level's budget) and reconstructs the original network's class scores
    on its calibration images better."""
    from specialist.allocation import plan_flops, uniform_counts
    from specialist.build import build_specialist
    from specialist.data import load_split
    from specialist.methods import PRESETS

    if PRESETS["recon"].calib_per_class != 200:
        pytest.fail("recon's documented default is 200 calibration images per class")
    classes, level, n = [3, 5], 30.0, 20
    calib = load_split("calib", data_dir)
    from specialist.build import with_overrides

    assert PRESETS["recon"].max_remove_pct == 40.0  # documented: at most 40% of a layer (60% for best)
    assert dict(PRESETS["recon"].layer_weights) == {"CCCP5": 0.4}  # documented: CCCP5's curve weighted 0.4
    alloc = {k: getattr(PRESETS["recon"], k) for k in ("max_remove_pct", "layer_weights")}
    best = build_specialist(classes, level, with_overrides(PRESETS["best"], alloc), base=base_weights)
    recon = build_specialist(classes, level, "recon", base=base_weights, calib=calib, calib_per_class=n)
    assert recon.flops == best.flops <= plan_flops(uniform_counts(level), len(classes))
    assert {L: len(v) for L, v in recon.kept.items()} == {L: len(v) for L, v in best.kept.items()}
    assert recon.kept != best.kept  # the refit-aware selection chose differently somewhere
    x = base_weights.normalize(calib.select(classes, per_class=n).x)
    ref = _pre_scores(base_weights, x)[:, classes]
    err = {name: float(np.mean((_pre_scores(s.weights, x) - ref) ** 2)) for name, s in
           (("best", best), ("recon", recon))}
    assert err["recon"] < err["best"], err


def test_refit_towards_identity_keeps_unchanged_inputs_exactly():
    """With the ridge pulling towards the selection, inputs that did not change refit to A = I whatever the
    ridge (towards 0 they shrink)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 5))
    g, c = _moments(x, x)
    np.testing.assert_allclose(refit_coefficients(g, c, np.arange(5), ridge=0.5, to_identity=True), np.eye(5),
                               atol=1e-9)
    assert np.all(np.diag(refit_coefficients(g, c, np.arange(5), ridge=0.5)) < 0.9)
    # a dropped channel: the kept ones still stand for themselves in the columns of the kept
    a = refit_coefficients(g, c, np.array([0, 2, 4]), ridge=0.5, to_identity=True)
    np.testing.assert_allclose(a[[0, 2, 4]], np.eye(3), atol=1e-9)


def test_relu_refit_lowers_the_error_after_the_relu():
    """Targets with many negative entries: least squares spends effort on entries the ReLU zeroes; the ReLU-aware
    rounds lower the error of relu(fit) against relu(target) and keep an exact fit exact."""
    from specialist.recon import relu_refit

    rng = np.random.default_rng(9)
    x = torch.from_numpy(np.abs(rng.normal(size=(200, 6, 4, 4))).astype(np.float32))
    w_true = rng.normal(size=(2, 6))
    lin = torch.einsum("nkhw,ok->nohw", x, torch.from_numpy(w_true).float()) - 1.0
    z = torch.where(lin > 0, lin, 3.0 * lin)  # below 0 the target is not linear in x: LS is pulled off
    flat = x.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    zf = z.permute(0, 2, 3, 1).reshape(-1, 2).double().numpy()
    design = np.hstack([flat, np.ones((len(flat), 1))])
    sol = np.linalg.lstsq(design, zf, rcond=None)[0]
    w0, c0 = sol[:6].T, np.broadcast_to(sol[6][:, None, None], (2, 4, 4)).copy()

    def post_err(w, c):
        fit = torch.einsum("nkhw,ok->nohw", x.double(), torch.from_numpy(w)) + torch.from_numpy(c)[None]
        return float(((torch.relu(fit) - torch.relu(z.double())) ** 2).mean())

    w1, c1 = relu_refit(x, z, w0, c0, ridge=1e-8, iters=3)
    assert post_err(w1, c1) < 0.5 * post_err(w0, c0)
    np.testing.assert_allclose(w1, w_true, atol=0.05)
    # an exact linear target (no distortion) stays exact
    w2, c2 = relu_refit(x, lin, w_true, -np.ones((2, 4, 4)), ridge=1e-8, iters=2)
    np.testing.assert_allclose(w2, w_true, atol=1e-4)


def test_defaults_with_nothing_pruned_reproduce_the_original():
    """The ReLU-aware rounds and the identity-centred ridge give back the original network when nothing changed."""
    from specialist.recon import RECON_DEFAULTS

    base = weights_from_arrays(_tiny_nin(seed=1))
    x = np.random.default_rng(3).normal(size=(16, 3, 32, 32)).astype(np.float32)
    scores: list = []
    spec, _ = reconstruct(base, [1, 4, 7], {}, x, ridge=1e-10, scores_out=scores, **RECON_DEFAULTS)
    want = _pre_scores(base, x)[:, [1, 4, 7]]
    np.testing.assert_allclose(_pre_scores(spec, x), want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.maximum(scores[0], 0), np.maximum(want, 0), rtol=1e-3, atol=1e-4)


def test_guard_returns_the_build_closer_to_the_original_scores():
    """build_reconstructed keeps recon unless the fallback (artifact-only build) is closer on the calibration
    images: the original network itself (cut to the classes) always is; a zeroed network never."""
    from specialist.data import Split
    from specialist.methods import PRESETS
    from specialist.recon import build_reconstructed

    arrays = _tiny_nin(seed=4)
    base = weights_from_arrays(arrays)
    rng = np.random.default_rng(4)
    split = Split(rng.integers(0, 255, size=(20, 32, 32, 3), dtype=np.uint8), np.repeat([0, 1], 10),
                  np.ones(20, bool), "synthetic")
    cut = dict(arrays)
    cut["CCCP6.weight"], cut["CCCP6.bias"] = arrays["CCCP6.weight"][:2], arrays["CCCP6.bias"][:2]
    exact = (weights_from_arrays(cut), {"CCCP6": [0, 1]})
    zero = {k: (np.zeros_like(v) if k.endswith("weight") else v) for k, v in cut.items()}
    zero = (weights_from_arrays(zero), {"CCCP6": [0, 1]})
    m = PRESETS["recon"]
    pruned = {"CCCP4": np.array([0, 1])}
    got = build_reconstructed(base, [0, 1], pruned, m, calib=split, fallback=lambda: exact)
    assert got is exact
    got = build_reconstructed(base, [0, 1], pruned, m, calib=split, fallback=lambda: zero)
    assert got is not zero and len(got[1]["CCCP4"]) == 6


def test_sampled_patches_equal_the_unfolded_ones():
    from specialist.recon import sample_patches

    x = torch.from_numpy(np.random.default_rng(12).normal(size=(3, 4, 9, 9)).astype(np.float32))
    pos = torch.from_numpy(np.random.default_rng(13).integers(0, 81, size=(3, 7)))
    for k, pad in ((5, 2), (3, 1), (1, 0)):
        u = torch.nn.functional.unfold(x, k, padding=pad)
        want = torch.gather(u, 2, pos[:, None, :].expand(-1, u.shape[1], -1))
        assert torch.equal(sample_patches(x, pos, k, pad), want)


def test_patch_refit_reuses_its_gram_matrix_exactly():
    from specialist.recon import patch_refit

    base = weights_from_arrays(_tiny_nin(seed=2))
    rng = np.random.default_rng(14)
    xs = torch.from_numpy(np.abs(rng.normal(size=(12, 8, 8, 8))).astype(np.float32))
    xo = xs + 0.1 * torch.from_numpy(rng.normal(size=(12, 8, 8, 8)).astype(np.float32))
    ms = xs.double().mean(0).numpy()
    i = LAYER_NAMES.index("CONV3")
    cache: dict = {}
    w1, c1 = patch_refit(xs, ms, xo, base, i, 1e-3, 16, cache=cache)
    w2, c2 = patch_refit(xs, ms, xo, base, i, 1e-3, 16, fit=(w1, c1))
    w3, c3 = patch_refit(xs, ms, xo, base, i, 1e-3, 16, fit=(w1, c1), cache=cache)
    np.testing.assert_allclose(w3, w2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c3, c2, rtol=1e-6, atol=1e-6)


def test_decision_sensitivity_of_the_class_scores():
    """At CCCP6 the margin's derivative is +-1/positions where the unit is on, 0 elsewhere and for the other
    classes: the sensitivity is the fraction of active positions over positions squared."""
    from specialist.recon import decision_sensitivity

    base = weights_from_arrays(_tiny_nin(seed=1))
    x = np.random.default_rng(3).normal(size=(6, 3, 32, 32)).astype(np.float32)
    got = decision_sensitivity(base, [0, 3], torch.from_numpy(x))
    assert set(got) == {"CONV2", "CCCP3", "CCCP4", "CONV3", "CCCP5", "CCCP6"}
    with torch.no_grad():
        net = NinNet(base)
        h = torch.from_numpy(x)
        for li in range(len(LAYER_NAMES) - 1):
            h = net.layer(li, h)
        z = net.convs[-1](h)
    active = (z > 0).double().mean(dim=(0, 2, 3)).numpy() / (z.shape[2] * z.shape[3]) ** 2
    want = np.where(np.isin(np.arange(10), [0, 3]), active, 0.0)
    np.testing.assert_allclose(got["CCCP6"], want, rtol=1e-6, atol=1e-12)
    assert all(np.all(v >= 0) for v in got.values()) and got["CCCP5"].max() > 0


def test_weighted_relu_refit_is_weighted_least_squares_where_all_is_on():
    """With every target and fit positive, the ReLU-aware refit with image weights is the weighted least-squares
    fit with one constant per position (closed form), and the decision weights favour small margins."""
    from specialist.recon import decision_weights, relu_refit

    rng = np.random.default_rng(15)
    x = torch.from_numpy(np.abs(rng.normal(size=(60, 4, 2, 2))).astype(np.float32))
    z = torch.einsum("nkhw,ok->nohw", x, torch.from_numpy(rng.normal(size=(2, 4))).float()) + 20.0 \
        + torch.from_numpy(rng.normal(size=(60, 2, 2, 2)).astype(np.float32))
    v = rng.uniform(0.5, 3.0, size=60)
    w, c = relu_refit(x, z, np.zeros((2, 4)), np.full((2, 2, 2), 20.0), ridge=1e-12, iters=1, image_weight=v)
    xf = x.permute(0, 2, 3, 1).reshape(60, 4, 4).double().numpy()  # [N, P, K]
    for o in range(2):
        zo = z[:, o].reshape(60, 4).double().numpy()
        design = np.concatenate([xf.reshape(240, 4), np.kron(np.ones((60, 1)), np.eye(4))], axis=1)
        sw = np.sqrt(np.repeat(v, 4))[:, None]
        sol = np.linalg.lstsq(design * sw, zo.reshape(-1) * sw[:, 0], rcond=None)[0]
        np.testing.assert_allclose(w[o], sol[:4], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c[o].reshape(-1), sol[4:], rtol=1e-4, atol=1e-4)
    s = np.array([[1.0, 0.9], [1.0, 0.0], [0.2, 0.9]])
    dw = decision_weights(s, 2.0)
    assert dw[0] > dw[2] > dw[1] > 1.0 and np.all(decision_weights(s, 0.0) == 1.0)


def test_class_aware_selection_only_for_fewer_classes_than_the_network():
    """With all ten classes every output counts (class_aware off); with two the selection is class-aware."""
    from specialist.calib_images import augment_images, calibration_images
    from specialist.data import Split
    from specialist.methods import PRESETS
    from specialist.recon import RECON_DEFAULTS, RIDGE_SCALE, build_reconstructed

    base = weights_from_arrays(_tiny_nin(seed=1))
    rng = np.random.default_rng(16)
    split = Split(rng.integers(0, 255, size=(20, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(10), 2),
                  np.ones(20, bool), "synthetic")
    m = PRESETS["recon"]
    assert RECON_DEFAULTS["class_aware"] == 1.0
    counts = {"CCCP2": 3, "CONV2": 3, "CCCP3": 3, "CCCP4": 4, "CONV3": 3, "CCCP5": 4}
    pruned = {L: np.arange(n) for L, n in counts.items()}
    for classes, aware in ((list(range(10)), 0.0), ([0, 3], 1.0)):
        x = augment_images(calibration_images(base, classes, m.calib_per_class, split))
        want, kw = reconstruct(base, classes, counts, x, m.ridge * RIDGE_SCALE, m.fold,
                               **(RECON_DEFAULTS | {"class_aware": aware}))
        _, other = reconstruct(base, classes, counts, x, m.ridge * RIDGE_SCALE, m.fold,
                               **(RECON_DEFAULTS | {"class_aware": 1.0 - aware}))
        got, kg = build_reconstructed(base, classes, pruned, m, calib=split)
        assert kg == kw != other  # the weighting changes the selection here
        np.testing.assert_array_equal(got.weights["CCCP6"], want.weights["CCCP6"])
