"""The model zoo: nn.Module definitions, build(name, ...) and the input normalization every net takes; no training
code here."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from fmnist.model.names import check_net, wrn_shape


class Cmasch(nn.Module):
    """PyTorch port of the published Keras model (github.com/cmasch/zalando-fashion-mnist, 93.43% as the mean of
    5 models after 80 epochs): 2 conv + dropout, 3 dense with BN before the output. 493,898 parameters at 28x28."""

    def __init__(self, n_classes: int, image_shape: tuple[int, int]):
        super().__init__()
        h, w = image_shape
        flat = 64 * ((h // 2 - 3) // 2) * ((w // 2 - 3) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 4, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.1),
            nn.Conv2d(64, 64, 4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Linear(64, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_pool_bn(c_in: int, c_out: int) -> nn.Sequential:
    """conv, then the 2x2 max-pool, then BatchNorm and ReLU (airbench's conv group): the memory-bound BatchNorm
    and ReLU, and every later conv of the stage, run on a quarter of the pixels."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class PatchWhitening(nn.Module):
    """A frozen first layer (airbench's): the eigenvectors of the training images' k x k patch covariance, each
    scaled to unit variance, and their negatives, so that the ReLU after it keeps both signs. Only its bias
    learns; `fit` sets the filters from training images before training, and they are saved with the weights.
    `padded` keeps the image size (odd sizes only); unpadded, a k x k layer trims k - 1 pixels off each side's
    length, as airbench's 2 x 2 layer does."""

    def __init__(self, size: int = 3, eps: float = 5e-4, padded: bool = True):
        super().__init__()
        if padded and size % 2 == 0:
            raise ValueError(f"PatchWhitening: a padded layer needs an odd patch size, got {size}")
        self.conv = nn.Conv2d(1, 2 * size * size, size, padding=size // 2 if padded else 0)
        self.conv.weight.requires_grad_(False)
        self.eps = eps

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """`images`: (N, 1, H, W) normalized as the net takes them."""
        k = self.conv.kernel_size[0]
        patches = nn.functional.unfold(images.float(), k).transpose(1, 2).reshape(-1, k * k).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T))
        filters = eigenvectors.T / torch.sqrt(eigenvalues + self.eps)[:, None]
        self.conv.weight.copy_(torch.cat([filters, -filters]).reshape(self.conv.weight.shape))
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FastVGG(nn.Module):
    """Low-FLOP VGG-style net for CPUs: stages of 3x3 conv-BN-ReLU, each followed by 2x2 max-pool; global max-pool
    and a linear head. `stages` lists each stage's conv widths; most FLOPs sit at 14x14 and 7x7. The default widths
    won against wider and narrower ones on a 2-core CPU (docs/fast-net-search.md). `whiten` puts a frozen
    PatchWhitening layer and a ReLU first. `pool_early` pools each stage right after its first conv
    (conv_pool_bn), so the stage's other convs run at the pooled resolution: 28x28 / 14, 7 / 7, 3 for the default
    widths: 18 MFLOP per image against 31 with whitening, and less memory-bound work at 28x28. `whiten_size` 2
    is airbench's unpadded 2 x 2 layer (8 channels): the stages then run at 27, 13 and 6 pixels a side, 22 MFLOP
    per image."""

    def __init__(self, n_classes: int, stages: tuple[tuple[int, ...], ...] = ((24,), (48, 48), (96, 96)),
                 whiten: bool = False, pool_early: bool = False, whiten_size: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        if whiten:
            layers += [PatchWhitening(whiten_size, padded=whiten_size % 2 == 1), nn.ReLU(inplace=True)]
            c_in = layers[0].conv.out_channels
        for widths in stages:
            for i, width in enumerate(widths):
                layers.append(conv_pool_bn(c_in, width) if pool_early and i == 0 else conv_bn(c_in, width))
                c_in = width
            if not pool_early:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes, bias=False))
        # A scaled-down output layer keeps the first updates from saturating the softmax (airbench's trick).
        self.scale = 1 / 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.scale


class BasicBlock(nn.Module):
    """Pre-activation residual block (Zagoruyko & Komodakis, Wide ResNets)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.dropout(torch.relu(self.bn2(self.conv1(out)))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-k for GPU accuracy runs (WRN-16-4: 2.7M parameters, WRN-16-8 11.0M, WRN-40-4 8.9M, WRN-28-10 36.5M)."""

    def __init__(self, n_classes: int, depth: int = 16, width: int = 4, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)]
        for stage in range(3):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                layers.append(BasicBlock(c_in, widths[stage + 1], 2 if i == 0 and stage > 0 else 1, dropout))
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[3], n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(name: str, n_classes: int, image_shape: tuple[int, int]) -> nn.Module:
    """The net called `name` (fmnist.model.names) for `n_classes` classes of single-channel images of
    `image_shape`."""
    if (shape := wrn_shape(check_net(name))) is not None:
        return WideResNet(n_classes, *shape)
    if name == "cmasch":
        return Cmasch(n_classes, image_shape)
    return FastVGG(n_classes, whiten=name != "fast", pool_early=name == "fast_pool",
                   whiten_size=2 if name == "fast_whiten2" else 3)


@torch.no_grad()
def dirac_init(model: nn.Module) -> nn.Module:
    """Identity initialisation (airbench): in every 3x3 conv with more than one input channel, the first `in`
    filters start as the identity (each passes its input channel through), the rest keep their random init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels > 1 and module.kernel_size == (3, 3):
            n = min(module.in_channels, module.out_channels)
            nn.init.dirac_(module.weight[:n])
    return model


@torch.no_grad()
def fit_whitening(model: nn.Module, images: torch.Tensor) -> None:
    """Set every PatchWhitening layer of `model` from `images` (normalized); nothing for nets without one."""
    for module in model.modules():
        if isinstance(module, PatchWhitening):
            module.fit(images)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy with each BatchNorm folded into the conv before it: the same function up to float
    rounding, about 1.3x faster on a CPU (validation every epoch, ensemble and evaluate)."""
    return fuse(model.eval(), inplace=False)


@dataclass
class Normalizer:
    """Pixels as every net takes them: the training set's mean and std, in the layout the net runs fastest in."""
    mean: torch.Tensor
    std: torch.Tensor
    channels_last: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> normalized float32, in the memory layout the net runs fastest in."""
        out = (x.float() / 255 - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
