"""CAM++ speaker embedding network (Wang et al., "CAM++: A Fast and Efficient Network for Speaker
Verification Using Context-Aware Masking", Interspeech 2023), written from the paper's description
and the shapes of the released weights (3D-Speaker's ``campplus_cn_en_common.pt``, Apache-2.0).

Input: 80-dim log-mel filterbanks, 10 ms apart, mean-normalised over time. Output: a 192-dim embedding.

    fbank (B, T, 80)
    -> front-end convolution module (FCM): 2-D residual blocks that halve the frequency axis 3 times
       -> (B, 32 * 10, T)
    -> TDNN (kernel 5, stride 2) -> (B, 128, T/2)
    -> 3 densely connected blocks of context-aware masking (CAM) TDNN layers (12, 24, 16 layers,
       growth 32, dilation 1, 2, 2), each followed by a transition layer that halves the channels
       -> (B, 512, T/2)
    -> statistics pooling (mean, std over time) -> (B, 1024)
    -> linear + batch norm without affine -> (B, 192)

Module names follow the weights' state_dict keys, so the file loads with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_MELS = 80
EMBEDDING_DIM = 192


class BatchNormReLU(nn.Sequential):
    """``nonlinear``: batch norm, then ReLU (or batch norm alone, without affine, for the embedding layer)."""

    def __init__(self, channels: int, relu: bool = True, affine: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        if relu:
            self.relu = nn.ReLU(inplace=True)


# ------------------------------------------------------------ front-end convolution module (2-D)
class ResBlock2d(nn.Module):
    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x):  # (B, C, F, T) -> (B, C, F / stride, T)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    def __init__(self, channels: int = 32, n_mels: int = N_MELS):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResBlock2d(channels, 2), ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(ResBlock2d(channels, 2), ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (n_mels // 8)

    def forward(self, x):  # (B, F, T)
        x = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))  # (B, 32, 80, T)
        x = self.layer2(self.layer1(x))  # (B, 32, 20, T)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 32, 10, T)
        b, c, f, t = x.shape
        return x.reshape(b, c * f, t)  # (B, 320, T)


# ------------------------------------------------------------ the TDNN trunk (1-D)
class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                                padding=(kernel_size - 1) // 2, bias=False)
        self.nonlinear = BatchNormReLU(out_channels)

    def forward(self, x):
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """A local TDNN output scaled by a mask predicted from the utterance mean plus the 100-frame segment mean."""

    def __init__(self, channels: int, out_channels: int, kernel_size: int, dilation: int, segment: int = 100):
        super().__init__()
        self.segment = segment
        self.linear_local = nn.Conv1d(channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2 * dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.linear2 = nn.Conv1d(channels // 2, out_channels, 1)

    def forward(self, x):  # (B, C, T)
        y = self.linear_local(x)  # (B, out, T)
        t = x.shape[-1]
        seg = F.avg_pool1d(x, self.segment, self.segment, ceil_mode=True)  # (B, C, ceil(T / 100))
        seg = seg.repeat_interleave(self.segment, dim=-1)[..., :t]  # (B, C, T): each frame its segment's mean
        context = x.mean(dim=-1, keepdim=True) + seg
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))  # (B, out, T)
        return y * mask


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BatchNormReLU(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = BatchNormReLU(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation)

    def forward(self, x):
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseTDNNBlock(nn.ModuleDict):
    """Densely connected: every layer sees the block input and all earlier layers' outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth: int, bn_channels: int, kernel_size: int,
                 dilation: int):
        super().__init__({
            f"tdnnd{i + 1}": CAMDenseTDNNLayer(in_channels + i * growth, growth, bn_channels, kernel_size, dilation)
            for i in range(num_layers)
        })

    def forward(self, x):  # (B, C, T) -> (B, C + num_layers * growth, T)
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = BatchNormReLU(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = BatchNormReLU(out_channels, relu=False, affine=False)

    def forward(self, x):  # (B, C)
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)  # (B, out)


def stats_pool(x):  # (B, C, T) -> (B, 2C)
    return torch.cat([x.mean(dim=-1), x.std(dim=-1)], dim=-1)


class CAMPPlus(nn.Module):
    def __init__(self, n_mels: int = N_MELS, embedding_dim: int = EMBEDDING_DIM, growth: int = 32, bn_size: int = 4,
                 init_channels: int = 128):
        super().__init__()
        self.head = FCM(n_mels=n_mels)
        self.xvector = nn.Sequential()
        self.xvector.add_module("tdnn", TDNNLayer(self.head.out_channels, init_channels, 5, stride=2))
        channels = init_channels
        for i, (layers, dilation) in enumerate(zip((12, 24, 16), (1, 2, 2)), start=1):
            self.xvector.add_module(f"block{i}", CAMDenseTDNNBlock(layers, channels, growth, bn_size * growth, 3,
                                                                   dilation))
            channels += layers * growth
            self.xvector.add_module(f"transit{i}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", BatchNormReLU(channels))
        self.xvector.add_module("dense", DenseLayer(channels * 2, embedding_dim))

    def forward(self, fbank):  # (B, T, n_mels)
        x = self.head(fbank.transpose(1, 2))  # (B, 320, T)
        *trunk, dense = self.xvector.children()
        for layer in trunk:  # tdnn, block1, transit1, ..., out_nonlinear
            x = layer(x)  # (B, 512, T / 2) at the end
        return dense(stats_pool(x))  # (B, 192)
