"""Calibration images and their augmented copies (specialist/calib_images.py): exact transforms, budget order."""

import numpy as np


def test_shifted_images_are_reflected_translations():
    from specialist.calib_images import shift_images

    x = np.random.default_rng(10).normal(size=(2, 3, 6, 7)).astype(np.float32)

    def refl(i, n):  # numpy's "reflect" (edge not repeated)
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    for dy, dx in ((0, 3), (-2, 0), (2, -2), (3, 3)):
        y = shift_images(x, dy, dx)
        want = np.empty_like(x)
        for i in range(6):
            for j in range(7):
                want[:, :, i, j] = x[:, :, refl(i - dy, 6), refl(j - dx, 7)]
        np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(shift_images(x, 0, 0), x)


def test_augmented_copies_fill_the_budget_in_order():
    from specialist.calib_images import SHIFTS, augment_images, shift_images

    x = np.random.default_rng(11).normal(size=(5, 3, 8, 8)).astype(np.float32)
    got = augment_images(x, budget=23, flip=True)  # 4 copies fit: images, mirror, shift 1, mirrored shift 1
    assert got.shape == (20, 3, 8, 8)
    mirror = x[..., ::-1]
    np.testing.assert_array_equal(got[:5], x)
    np.testing.assert_array_equal(got[5:10], mirror)
    np.testing.assert_array_equal(got[10:15], shift_images(x, *SHIFTS[0]))
    np.testing.assert_array_equal(got[15:20], shift_images(np.ascontiguousarray(mirror), *SHIFTS[0]))
    # images and mirror images always, whatever the budget; no flip: shifts of the images only
    assert len(augment_images(x, budget=1, flip=True)) == 10
    np.testing.assert_array_equal(augment_images(x, budget=15, flip=False)[10:], shift_images(x, *SHIFTS[1]))
    # the preset's default: the mirror images only
    assert len(augment_images(np.zeros((400, 3, 1, 1), np.float32))) == 800
    assert len(augment_images(np.zeros((400, 3, 1, 1), np.float32), budget=2400)) == 2400
