"""The zoo and the three ways to bring a model (zoo name, package.module:factory + weights, .pt2 program)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from specialist.errors import DataError, InputError, UsageError
from specialist.graph.source import load_model, model_kind
from specialist.zoo import ZOO, CifarResNet, ModelDescription, shipped_weights, zoo_model

SHARED_MODELS = Path(__file__).resolve().parents[2].parent / "shared" / "models"
RESNET20_SHA256 = "e8ef4976cc1b8c62b4214fbe977f55ca429bce543857c7dccf007392bf6ea479"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_factory() -> nn.Module:
    """A user's own model for the ``package.module:factory`` route (this test module is importable)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 7))


def not_a_module():
    return 42


@pytest.mark.parametrize("name,params", [("resnet20", 272474), ("resnet56", 855770)])
def test_resnet_parameter_counts_match_he_et_al(name, params):
    model, desc = zoo_model(name, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == params
    assert desc.num_classes == 10 and desc.input_shape == (3, 32, 32)


def test_every_zoo_model_runs_on_a_cifar_batch():
    for name in ZOO:
        model, desc = zoo_model(name, pretrained=False)
        with torch.no_grad():
            out = model(torch.randn(2, *desc.input_shape))
        assert out.shape == (2, 10), name
        assert torch.isfinite(out).all() and out.std() > 1e-3, name  # BN calibrated: not a constant network


def test_shipped_resnet20_is_the_shared_file_and_loads():
    path = shipped_weights("resnet20")
    assert path is not None and path.stat().st_size < 2_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RESNET20_SHA256
    model, desc = zoo_model("resnet20")
    assert desc.source.endswith("resnet20_cifar10.pt")
    sd = torch.load(path, weights_only=True)
    assert torch.equal(model.state_dict()["layer2.0.shortcut.0.weight"], sd["layer2.0.shortcut.0.weight"])


def test_random_weights_are_seeded():
    a, _ = zoo_model("resnet20", pretrained=False, seed=1)
    b, _ = zoo_model("resnet20", pretrained=False, seed=1)
    c, _ = zoo_model("resnet20", pretrained=False, seed=2)
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)


def test_model_kind_and_bad_specs():
    assert model_kind("resnet20") == "zoo"
    assert model_kind("x/y.pt2") == "program"
    assert model_kind("pkg.mod:make") == "factory"
    with pytest.raises(UsageError, match="neither a zoo name"):
        model_kind("resnet21")
    with pytest.raises(InputError, match="cannot import"):
        load_model("no_such_pkg_xyz.mod:make")
    with pytest.raises(InputError, match="no callable"):
        load_model("tests.specialist.test_zoo:missing")
    with pytest.raises(InputError, match="not a torch nn.Module"):
        load_model("tests.specialist.test_zoo:not_a_module")


def test_factory_with_weights_and_sidecar(tmp_path):
    model = tiny_factory()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    wpath = tmp_path / "mine.pt"
    torch.save(model.state_dict(), wpath)
    (tmp_path / "mine.json").write_text(json.dumps({"input_shape": [3, 20, 20], "input_mean": [1, 2, 3],
                                                    "input_std": [4, 5, 6], "other": "ignored"}))
    lm = load_model("tests.specialist.test_zoo:tiny_factory", weights=wpath)
    assert lm.description.num_classes == 7 and lm.description.input_shape == (3, 20, 20)
    assert lm.description.mean == (1.0, 2.0, 3.0) and lm.description.std == (4.0, 5.0, 6.0)
    assert torch.equal(lm.module[0].weight, model[0].weight)  # the file's weights, not the factory's
    over = load_model("tests.specialist.test_zoo:tiny_factory", weights=wpath, mean=(0, 0, 0), std=(1, 1, 1))
    assert over.description.mean == (0.0, 0.0, 0.0)


def test_bad_weights_files_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_model("resnet20", weights=tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a torch state_dict"):
        load_model("resnet20", weights=junk)
    wrong = tmp_path / "wrong.pt"
    torch.save(tiny_factory().state_dict(), wrong)
    with pytest.raises(DataError, match="does not fit the model"):
        load_model("resnet20", weights=wrong)
    with pytest.raises(UsageError, match="does not apply"):
        load_model(str(tmp_path / "m.pt2"), weights=wrong)
    with pytest.raises(DataError, match="does not exist"):
        load_model(str(tmp_path / "m.pt2"))


def test_description_validates_itself():
    with pytest.raises(UsageError, match="one per input channel"):
        ModelDescription("m", (3, 32, 32), 10, (1.0,), (1.0,))
    with pytest.raises(UsageError, match="positive"):
        ModelDescription("m", (3, 32, 32), 10, (0, 0, 0), (1, 0, 1))
    d = ModelDescription("m")
    x = d.normalize(np.full((1, 32, 32, 3), 125.3, dtype=np.float32))
    assert x.shape == (1, 3, 32, 32) and abs(float(x[0, 0, 0, 0])) < 1e-6


def test_pt2_program_round_trip_equals_the_module(tmp_path):
    model = CifarResNet(1, 10).eval()
    path = tmp_path / "r8.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 32, 32),)), str(path))
    lm = load_model(str(path))
    assert lm.description.input_shape == (3, 32, 32) and lm.description.num_classes == 10
    assert {"conv1", "layer2.0.shortcut.0", "fc"} <= {n for n, _ in lm.module.named_modules()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.module(x), model(x), atol=1e-5)


@pytest.mark.skipif(not (SHARED_MODELS / "resnet20_cifar10.pt2").is_file(), reason="no shared models")
def test_shared_resnet20_program_equals_the_zoo_model():
    prog = load_model(str(SHARED_MODELS / "resnet20_cifar10.pt2"))
    zoo = load_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(prog.module(x), zoo.module(x), atol=1e-5)


def test_shipped_resnet20_accuracy_on_exact_test_images(data_dir):
    """The README: 88.00% on the 1,000 bit-exact test images; 400 of them here (CI about +-3.2 points)."""
    from specialist.data import load_split

    split = load_split("test", data_dir)
    idx = np.flatnonzero(split.exact)[:400]
    lm = load_model("resnet20")
    x = lm.description.normalize(split.x[idx])
    with torch.no_grad():
        pred = lm.module(x).argmax(1).numpy()
    acc = 100.0 * float(np.mean(pred == split.y[idx]))
    assert abs(acc - 88.0) < 5.0, acc
