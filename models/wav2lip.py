"""The Wav2Lip generator (Prajwal et al., 2020), laid out so the official checkpoints load with strict=True.

Module and attribute names mirror the published state dict: ``face_encoder_blocks``, ``audio_encoder``,
``face_decoder_blocks``, ``output_block``, each conv unit holding ``conv_block = [conv, batchnorm]``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.checkpoint import load_strict, pick_state_dict, read_checkpoint, strip_prefix

FACE_SIZE = 96


class Conv(nn.Module):
    """Conv2d -> BatchNorm (-> + input) -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int | tuple = 3, s: int | tuple = 1, p: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout))
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class ConvT(nn.Module):
    """ConvTranspose2d -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, k: int, s: int, p: int, output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, k, s, p, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(c: int, n: int) -> list[Conv]:
    return [Conv(c, c, residual=True) for _ in range(n)]


class Wav2Lip(nn.Module):
    """Generator: faces (B, 6, 96, 96) in [0, 1] + mel (B, 1, 80, 16) -> faces (B, 3, 96, 96) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv(6, 16, 7, 1, 3)),
            nn.Sequential(Conv(16, 32, 3, 2, 1), *_res(32, 2)),
            nn.Sequential(Conv(32, 64, 3, 2, 1), *_res(64, 3)),
            nn.Sequential(Conv(64, 128, 3, 2, 1), *_res(128, 2)),
            nn.Sequential(Conv(128, 256, 3, 2, 1), *_res(256, 2)),
            nn.Sequential(Conv(256, 512, 3, 2, 1), *_res(512, 1)),
            nn.Sequential(Conv(512, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0)),
        ])
        self.audio_encoder = nn.Sequential(
            Conv(1, 32), *_res(32, 2),
            Conv(32, 64, 3, (3, 1), 1), *_res(64, 2),
            Conv(64, 128, 3, 3, 1), *_res(128, 2),
            Conv(128, 256, 3, (3, 2), 1), *_res(256, 1),
            Conv(256, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0),
        )
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv(512, 512, 1, 1, 0)),
            nn.Sequential(ConvT(1024, 512, 3, 1, 0), *_res(512, 1)),
            nn.Sequential(ConvT(1024, 512, 3, 2, 1, 1), *_res(512, 2)),
            nn.Sequential(ConvT(768, 384, 3, 2, 1, 1), *_res(384, 2)),
            nn.Sequential(ConvT(512, 256, 3, 2, 1, 1), *_res(256, 2)),
            nn.Sequential(ConvT(320, 128, 3, 2, 1, 1), *_res(128, 2)),
            nn.Sequential(ConvT(160, 64, 3, 2, 1, 1), *_res(64, 2)),
        ])
        self.output_block = nn.Sequential(Conv(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Argument order of the published model: audio first, then faces."""
        x = self.audio_encoder(mel)
        skips = []
        f = faces
        for block in self.face_encoder_blocks:
            f = block(f)
            skips.append(f)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)


def load_wav2lip(path: str | Path, device: torch.device | str = "cpu") -> Wav2Lip:
    """Load ``wav2lip.pth`` / ``wav2lip_gan.pth`` (``state_dict`` with ``module.`` keys) or a bare state dict."""
    ckpt = read_checkpoint(path)
    sd = strip_prefix(pick_state_dict(ckpt, path, nested=("state_dict",)))
    model = load_strict(Wav2Lip(), sd, path)
    return model.to(device).eval()
