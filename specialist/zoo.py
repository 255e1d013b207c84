"""A zoo of CIFAR-10 CNNs: ResNet-20/56, VGG-16-BN, MobileNetV2 and NIN itself (random or shipped weights).

Each entry is a :class:`ZooEntry`: a factory of a plain ``nn.Module`` plus the model description
(:class:`ModelDescription`: input shape, class count, input normalisation).  The architectures are the
standard CIFAR-10 variants:

- ``resnet20`` / ``resnet56``: He et al. (2016, sec. 4.2), 16/32/64 channels, 3 stages of n basic blocks
  (n = 3 / 9); the first block of stages 2 and 3 has stride 2 and a projection shortcut (1x1 conv + BN), exactly
  as ``../shared/models/README-resnet20.md`` describes, so the shipped ResNet-20 state_dict loads unchanged.
- ``vgg16_bn``: VGG-16 (13 convs with BatchNorm, 5 max-pools: 32 -> 1) and one Linear head 512 -> classes.
- ``nin``: the paper's NIN (``specialist.model.NinNet``, nine convolutions) as a plain module, so the graph
  machinery runs on it too (``load_model("nin")``); the shipped weights are ``specialist/assets/nin_cifar10.npz``.
  On the command line ``--model nin`` keeps the original NIN path (``harness.graphargs.is_graph_spec``).
- ``mobilenetv2``: Sandler et al. (2018) inverted residuals, width 1.0, with stride 1 in the stem and in the
  first two stride-2 stages of the ImageNet network (32x32 inputs keep 32 -> 32 -> 16 -> 8 -> 4), the
  common CIFAR-10 variant; ReLU6, 1280-channel last conv, dropout-free Linear head.

Registry of small factories (``ZOO``); :func:`zoo_model` builds one.  Weights: random (seeded) unless the
entry has shipped weights (``resnet20``: ``specialist/assets/resnet20_cifar10.pt``; ``nin``: the NIN ``.npz``)
and ``pretrained=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specialist.errors import DataError, UsageError

ASSETS = Path(__file__).resolve().parent / "assets"
#: The per-channel normalisation of RGB pixels 0-255 that NIN and ResNet-20 were trained with (their READMEs).
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)
CIFAR10_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class ModelDescription:
    """What the pipeline needs to know about a model besides its module.

    ``input_shape`` is one image (C, H, W); inputs are ``(pixel - mean) / std`` per channel, pixels 0-255.
    """

    name: str
    input_shape: tuple[int, ...] = CIFAR10_SHAPE
    num_classes: int = 10
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(d) < 1 for d in self.input_shape):
            raise UsageError(f"input shape must be C,H,W with positive sizes, got {self.input_shape}")
        if self.num_classes < 1:
            raise UsageError(f"class count must be at least 1, got {self.num_classes}")
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise UsageError(f"input mean/std need {c} values (one per input channel), got "
                             f"{len(self.mean)} and {len(self.std)}")
        if any(not s > 0 for s in self.std):
            raise UsageError(f"input std must be positive, got {self.std}")

    def normalize(self, images_nhwc_u8) -> torch.Tensor:
        """uint8 (or float 0-255) NHWC images -> normalised float32 NCHW tensor."""
        x = torch.as_tensor(images_nhwc_u8).to(torch.float32).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[None, :, None, None]
        return ((x - mean) / std).contiguous()


# --------------------------------------------------------------------------- ResNet (CIFAR)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity or projection (1x1 conv + BN) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem 16, stages 16/32/64 of n blocks, global pool, ``fc``."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- VGG-16-BN (CIFAR)

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (five pools: 1x1 at the end) and one Linear head."""

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# --------------------------------------------------------------------------- MobileNetV2 (CIFAR)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=False))


class InvertedResidual(nn.Module):
    """1x1 expand (skipped at t=1) -> 3x3 depthwise (stride s) -> 1x1 linear projection (+ input if s=1, same width)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = [] if t == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


#: (t, c, n, s) of the ImageNet MobileNetV2, with the stem and the first two stride-2 stages at stride 1.
MOBILENETV2_CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 1), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) for 32x32 inputs: stem stride 1, 32 -> 32 -> 16 -> 8 spatial, Linear head."""

    def __init__(self, num_classes: int = 10, cfg=MOBILENETV2_CIFAR_CFG, width: float = 1.0):
        super().__init__()
        cin = int(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 1)]
        for t, c, n, s in cfg:
            cout = int(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = max(1280, int(1280 * width))
        layers.append(_conv_bn(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------- NIN (the paper's network)


def nin_random(num_classes: int = 10) -> nn.Module:
    """NIN (paper Table 1, :class:`specialist.model.NinNet`) with random weights: He-normal filters (unit-scale
    activations through the nine ReLU layers) and small random biases; ``num_classes`` CCCP6 outputs."""
    from specialist.model import NIN_LAYERS, NinNet, NinWeights

    ws, bs, prev = {}, {}, 3
    for s in NIN_LAYERS:
        out = num_classes if s.name == "CCCP6" else s.out_ch
        fan_in = prev * s.kernel * s.kernel
        ws[s.name] = (torch.randn(out, prev, s.kernel, s.kernel) * math.sqrt(2.0 / fan_in)).numpy()
        bs[s.name] = (0.1 * torch.randn(out)).numpy()
        prev = out
    return NinNet(NinWeights(ws, bs, np.asarray(CIFAR10_MEAN, np.float32), np.asarray(CIFAR10_STD, np.float32)))


def load_nin_npz(model: nn.Module, path: str | Path) -> None:
    """Load NIN weights from an ``.npz`` (``specialist.model.load_weights``: one-line DataError) into a NinNet."""
    from specialist.model import LAYER_NAMES, load_weights

    w = load_weights(path)
    if w.consts:
        raise DataError(f"weights file {path} holds per-position constants (a specialist), not a base NIN")
    state = {}
    for i, name in enumerate(LAYER_NAMES):
        state[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.weights[name]))
        state[f"convs.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(w.biases[name]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"weights file {path} does not fit the model: {' '.join(str(exc).split())[:300]}") from None


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: factory ``(num_classes) -> nn.Module``, its description, optional shipped weights."""

    factory: Callable[[int], nn.Module]
    description: ModelDescription
    weights: str = ""  # file name under specialist/assets/ ("" = none shipped)
    doc: str = ""
    #: how the shipped weights file is read into the module (None: a torch state_dict, load_state_dict_file)
    loader: Callable[[nn.Module, Path], None] | None = None


ZOO: dict[str, ZooEntry] = {
    "resnet20": ZooEntry(lambda k: CifarResNet(3, k), ModelDescription("resnet20", source="zoo:resnet20"),
                         "resnet20_cifar10.pt", "ResNet-20 (He et al.), trained for this project (87.5%)"),
    "resnet56": ZooEntry(lambda k: CifarResNet(9, k), ModelDescription("resnet56", source="zoo:resnet56"),
                         doc="ResNet-56 (He et al.)"),
    "vgg16_bn": ZooEntry(lambda k: CifarVGG(VGG16_CFG, k), ModelDescription("vgg16_bn", source="zoo:vgg16_bn"),
                         doc="VGG-16 with BatchNorm, one Linear head"),
    "mobilenetv2": ZooEntry(lambda k: CifarMobileNetV2(k),
                            ModelDescription("mobilenetv2", source="zoo:mobilenetv2"),
                            doc="MobileNetV2 1.0, stride 1 in the stem and first stages (32x32)"),
    "nin": ZooEntry(nin_random, ModelDescription("nin", source="zoo:nin"), "nin_cifar10.npz",
                    "NIN (the paper's network) as a plain module; the CLI's --model nin keeps the NIN path",
                    loader=load_nin_npz),
}


def zoo_names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(ZOO)


def zoo_entry(name: str) -> ZooEntry:
    """The entry named ``name``, or a one-line :class:`UsageError` listing the zoo."""
    try:
        return ZOO[name]
    except KeyError:
        raise UsageError(f"no zoo model {name!r}; the zoo has {', '.join(zoo_names())}") from None


def shipped_weights(name: str) -> Path | None:
    """Path of the weights shipped for zoo model ``name`` (None when the package ships none)."""
    entry = zoo_entry(name)
    if not entry.weights:
        return None
    path = ASSETS / entry.weights
    return path if path.is_file() else None


def zoo_model(name: str, pretrained: bool = True, seed: int = 0, num_classes: int | None = None
              ) -> tuple[nn.Module, ModelDescription]:
    """Build zoo model ``name`` in eval mode: shipped weights when ``pretrained`` and shipped, else random
    (``torch.manual_seed(seed)``; BatchNorm running statistics randomised so BN is not an identity)."""
    entry = zoo_entry(name)
    desc = entry.description
    k = desc.num_classes if num_classes is None else int(num_classes)
    path = shipped_weights(name) if pretrained and k == desc.num_classes else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = entry.factory(k)
        if path is None:
            randomize_batchnorm(model, desc.input_shape)
    if path is not None:
        (entry.loader or load_state_dict_file)(model, path)
        desc = ModelDescription(desc.name, desc.input_shape, k, desc.mean, desc.std, f"zoo:{name}:{path.name}")
    elif k != desc.num_classes:
        desc = ModelDescription(desc.name, desc.input_shape, k, desc.mean, desc.std, desc.source)
    return model.eval(), desc


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, input_shape: tuple[int, ...] = CIFAR10_SHAPE, images: int = 8) -> None:
    """Random BatchNorm affine parameters, running statistics set from a forward pass over ``images`` N(0, 1)
    inputs, so a random network keeps its activations at unit scale through every layer (tests)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(torch.randn((images, *input_shape)))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.eval()


def load_state_dict_file(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file (``torch.load(weights_only=True)``) into ``model``; one-line DataError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"weights file {path} is not a torch state_dict: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise DataError(f"weights file {path} does not fit the model: {first}") from None
