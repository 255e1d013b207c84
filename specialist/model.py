"""The base network: NIN as in the paper's Table 1, weights loading and a plain torch module.

A specialist is the same network with fewer channels (and, optionally, per-position constants
added before a layer's ReLU: the paper's exact mean compensation), so one module class serves both.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specialist.errors import DataError


@dataclass(frozen=True)
class LayerSpec:
    """One convolution of NIN: kernel, padding and what follows its ReLU."""

    name: str
    in_ch: int
    out_ch: int
    kernel: int
    padding: int
    post: str  # "" | "maxpool" | "avgpool" | "gap"
    in_hw: int  # spatial size of the layer's input (= its output before any pool)


NIN_LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("CONV1", 3, 192, 5, 2, "", 32),
    LayerSpec("CCCP1", 192, 160, 1, 0, "", 32),
    LayerSpec("CCCP2", 160, 96, 1, 0, "maxpool", 32),
    LayerSpec("CONV2", 96, 192, 5, 2, "", 16),
    LayerSpec("CCCP3", 192, 192, 1, 0, "", 16),
    LayerSpec("CCCP4", 192, 192, 1, 0, "avgpool", 16),
    LayerSpec("CONV3", 192, 192, 3, 1, "", 8),
    LayerSpec("CCCP5", 192, 192, 1, 0, "", 8),
    LayerSpec("CCCP6", 192, 10, 1, 0, "gap", 8),
)
LAYER_NAMES: tuple[str, ...] = tuple(s.name for s in NIN_LAYERS)
#: Layers whose output channels the level applies to (paper 6.1: first two layers intact).
PRUNABLE: tuple[str, ...] = ("CCCP2", "CONV2", "CCCP3", "CCCP4", "CONV3", "CCCP5")
INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)
CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
#: Classes of the base model (CIFAR-10): the one definition every part uses.
N_CLASSES = len(CLASS_NAMES)


def default_model_path() -> Path:
    """The base model shipped inside the package."""
    return Path(str(resources.files("specialist") / "assets" / "nin_cifar10.npz"))


@dataclass
class NinWeights:
    """Weights of a (possibly pruned) NIN: per layer OIHW weight and bias, plus input normalisation.

    ``consts`` maps a layer name to a per-position constant ``[out, H, W]`` added to that layer's
    convolution output before its ReLU (exact mean compensation); empty for plain networks.
    """

    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    input_mean: np.ndarray
    input_std: np.ndarray
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    _hash: str | None = field(default=None, repr=False, compare=False)

    def channels(self) -> dict[str, int]:
        return {n: int(self.weights[n].shape[0]) for n in LAYER_NAMES}

    def copy(self) -> NinWeights:
        return NinWeights(
            {k: v.copy() for k, v in self.weights.items()},
            {k: v.copy() for k, v in self.biases.items()},
            self.input_mean.copy(),
            self.input_std.copy(),
            {k: v.copy() for k, v in self.consts.items()},
            self.source,
        )

    def content_hash(self) -> str:
        """sha256 over names, shapes and bytes of every array (container-independent; cached: treat the
        arrays as immutable once hashed)."""
        if self._hash is not None:
            return self._hash
        h = hashlib.sha256()
        arrays = {f"{n}.weight": self.weights[n] for n in LAYER_NAMES}
        arrays.update({f"{n}.bias": self.biases[n] for n in LAYER_NAMES})
        arrays["input.mean"] = self.input_mean
        arrays["input.std"] = self.input_std
        arrays.update({f"{n}.const": c for n, c in self.consts.items()})
        for key in sorted(arrays):
            a = np.ascontiguousarray(arrays[key], dtype=np.float32)
            h.update(key.encode())
            h.update(str(a.shape).encode())
            h.update(a.tobytes())
        self._hash = h.hexdigest()
        return self._hash

    def normalize(self, images_nhwc_u8: np.ndarray) -> np.ndarray:
        """uint8 NHWC RGB -> float32 NCHW normalised as the model expects."""
        x = images_nhwc_u8.astype(np.float32).transpose(0, 3, 1, 2)
        x -= self.input_mean.reshape(1, 3, 1, 1)
        x /= self.input_std.reshape(1, 3, 1, 1)
        return np.ascontiguousarray(x)


def load_weights(path: str | Path | None = None) -> NinWeights:
    """Load NIN weights from an ``.npz`` with arrays ``<LAYER>.weight``/``.bias`` and ``input.mean/std``.

    Raises :class:`DataError` with one clear line for a missing, truncated or ill-shaped file.
    """
    p = Path(path) if path is not None else default_model_path()
    if not p.is_file():
        raise DataError(f"weights file {p} not found; give an .npz with <LAYER>.weight/.bias arrays")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"weights file {p} is truncated or not a NumPy .npz archive ({exc})") from None
    return weights_from_arrays(arrays, source=str(p))


def weights_from_arrays(arrays: dict[str, np.ndarray], source: str = "") -> NinWeights:
    """Validate a name->array mapping against the NIN architecture (pruned widths allowed)."""
    missing = [f"{n}.{k}" for n in LAYER_NAMES for k in ("weight", "bias") if f"{n}.{k}" not in arrays]
    missing += [k for k in ("input.mean", "input.std") if k not in arrays]
    if missing:
        raise DataError(f"weights {source or '(arrays)'} lack {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}; expected NIN arrays <LAYER>.weight/.bias")
    w = {n: np.asarray(arrays[f"{n}.weight"], dtype=np.float32) for n in LAYER_NAMES}
    b = {n: np.asarray(arrays[f"{n}.bias"], dtype=np.float32) for n in LAYER_NAMES}
    prev_out = 3
    for spec in NIN_LAYERS:
        wt = w[spec.name]
        if wt.ndim != 4 or wt.shape[1] != prev_out or wt.shape[2:] != (spec.kernel, spec.kernel):
            raise DataError(f"weights {source or '(arrays)'}: {spec.name}.weight has shape {wt.shape}, "
                            f"expected [*, {prev_out}, {spec.kernel}, {spec.kernel}]")
        if b[spec.name].shape != (wt.shape[0],):
            raise DataError(f"weights {source or '(arrays)'}: {spec.name}.bias has shape "
                            f"{b[spec.name].shape}, expected ({wt.shape[0]},)")
        if not np.all(np.isfinite(wt)) or not np.all(np.isfinite(b[spec.name])):
            raise DataError(f"weights {source or '(arrays)'}: {spec.name} holds NaN or inf")
        prev_out = wt.shape[0]
    consts = {}
    for key, val in arrays.items():
        if key.endswith(".const"):
            consts[key[: -len(".const")]] = np.asarray(val, dtype=np.float32)
    mean = np.asarray(arrays["input.mean"], dtype=np.float32).reshape(3)
    std = np.asarray(arrays["input.std"], dtype=np.float32).reshape(3)
    return NinWeights(w, b, mean, std, consts, source)


def weights_to_arrays(w: NinWeights) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for n in LAYER_NAMES:
        out[f"{n}.weight"] = w.weights[n]
        out[f"{n}.bias"] = w.biases[n]
    out["input.mean"] = w.input_mean
    out["input.std"] = w.input_std
    for n, c in w.consts.items():
        out[f"{n}.const"] = c
    return out


def weights_npz_bytes(w: NinWeights) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **weights_to_arrays(w))
    return buf.getvalue()


def nin_convs(w: NinWeights) -> nn.ModuleList:
    """The convolutions of NIN (in layer order) holding ``w``'s weights and biases."""
    convs = nn.ModuleList()
    for spec in NIN_LAYERS:
        wt = torch.from_numpy(np.ascontiguousarray(w.weights[spec.name]))
        conv = nn.Conv2d(wt.shape[1], wt.shape[0], spec.kernel, padding=spec.padding)
        with torch.no_grad():
            conv.weight.copy_(wt)
            conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(w.biases[spec.name])))
        convs.append(conv)
    return convs


class NinNet(nn.Module):
    """Plain NIN (any widths): conv -> [+const] -> ReLU -> [pool], ending in global average pooling.

    Input: normalised float32 NCHW ``[N, 3, 32, 32]``.  Output: class scores ``[N, classes]`` (>= 0).
    """

    def __init__(self, w: NinWeights):
        super().__init__()
        self.names = list(LAYER_NAMES)
        self.convs = nin_convs(w)
        self.posts = [s.post for s in NIN_LAYERS]
        self.const_names: list[str] = []
        for name, c in w.consts.items():
            self.register_buffer(f"const_{name}", torch.from_numpy(np.ascontiguousarray(c))[None])
            self.const_names.append(name)
        self._const_idx = {LAYER_NAMES.index(n): f"const_{n}" for n in self.const_names}
        self.eval()

    def _post(self, i: int, x: torch.Tensor) -> torch.Tensor:
        post = self.posts[i]
        if post == "maxpool":
            return torch.nn.functional.max_pool2d(x, 3, 2, 1)
        if post == "avgpool":
            return torch.nn.functional.avg_pool2d(x, 3, 2, 1)
        if post == "gap":
            return x.mean(dim=(2, 3))
        return x

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Apply layer i (conv, constant, ReLU, pool) to its input."""
        y = self.convs[i](x)
        if i in self._const_idx:
            y = y + getattr(self, self._const_idx[i])
        return self._post(i, torch.relu(y))

    def forward_from(self, start: int, x: torch.Tensor) -> torch.Tensor:
        """Run layers ``start..end`` on the input of layer ``start``."""
        for i in range(start, len(self.convs)):
            x = self.layer(i, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, x)


def build_module(w: NinWeights) -> NinNet:
    return NinNet(w)


@torch.no_grad()
def predict_scores(net: NinNet, x: np.ndarray, batch: int = 500, start: int = 0) -> np.ndarray:
    """Scores for a float32 array (the input of layer ``start``), batched, no grad."""
    outs = []
    for i in range(0, len(x), batch):
        outs.append(net.forward_from(start, torch.from_numpy(x[i : i + batch])).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, net.convs[-1].out_channels), np.float32)
