"""SyncNet (Chung & Zisserman, 2016) and the lip-sync scores of Wav2Lip's evaluation (Prajwal et al., 2020).

The network is module ``S`` of joonson/syncnet_python: a 2-D CNN over 13 MFCCs x 20 steps (0.2 s of
audio) and a 3-D CNN over 5 face crops (224x224, BGR, 0..255, no normalisation), each followed by a
fully connected head giving a 1024-d embedding; in sync, the two embeddings are close. Its module tree
mirrors the published ``syncnet_v2.model`` (a plain state dict) key for key, so that file loads strictly.

The scores follow the reference evaluation: for every offset of the audio against the video within
``±vshift`` frames, the distance between each 5-frame lip window and the matching audio window,
averaged over the frames. LSE-D is the smallest mean distance (lower is better), LSE-C the median of
the mean distances minus that minimum (higher is better: how clearly one offset stands out), and the
offset is ``vshift`` minus the index of the best one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import load_strict, pick_state_dict, read_checkpoint

FPS = 25                     # video frames per second the network was trained on
SAMPLE_RATE = 16000          # audio samples per second
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
MFCC_PER_FRAME = 4           # python_speech_features' 10 ms step: 4 MFCC columns per 40 ms frame
WINDOW = 5                   # video frames per lip window (20 MFCC columns)
CROP = 224                   # side of the face crops
EMBEDDING = 1024
VSHIFT = 15                  # offsets tried: -15..15 frames (±0.6 s)
FRAMEWISE_KERNEL = 9         # median filter of the framewise confidence


def _conv_block(conv: nn.Module, channels: int, norm: type[nn.Module]) -> list[nn.Module]:
    return [conv, norm(channels), nn.ReLU(inplace=True)]


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING))


class SyncNet(nn.Module):
    """Module ``S`` of the reference: ``netcnnaud`` + ``netfcaud`` embed MFCC windows (N, 1, 13, 20),
    ``netcnnlip`` + ``netfclip`` embed lip windows (N, 3, 5, 224, 224); both give (N, 1024).

    Layer indices inside each ``nn.Sequential`` match the published weight file (pooling and ReLU
    layers keep their places so the numbered keys line up).
    """

    def __init__(self) -> None:
        super().__init__()
        c2, c3, b2, b3 = nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.BatchNorm3d
        self.netcnnaud = nn.Sequential(
            *_conv_block(c2(1, 64, 3, padding=1), 64, b2), nn.MaxPool2d(1, 1),
            *_conv_block(c2(64, 192, 3, padding=1), 192, b2), nn.MaxPool2d(3, (1, 2)),
            *_conv_block(c2(192, 384, 3, padding=1), 384, b2),
            *_conv_block(c2(384, 256, 3, padding=1), 256, b2),
            *_conv_block(c2(256, 256, 3, padding=1), 256, b2), nn.MaxPool2d(3, 2),
            *_conv_block(c2(256, 512, (5, 4)), 512, b2),
        )
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = nn.Sequential(
            *_conv_block(c3(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, b3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_block(c3(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, b3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            *_conv_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_conv_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_conv_block(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_block(c3(256, 512, (1, 6, 6)), 512, b3),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(x).flatten(1))


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNet:
    """Build :class:`SyncNet`, load the plain state dict at ``path`` strictly (``weights_only``), return
    it on ``device`` in eval mode.

    Files saved before PyTorch 0.4.1 carry no BatchNorm ``num_batches_tracked`` counters; those count
    training steps only (nothing reads them in eval mode), so they alone may be absent.
    """
    sd = pick_state_dict(read_checkpoint(path), path)
    net = SyncNet()
    for key, value in net.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in sd and key.rsplit(".", 1)[0] + ".weight" in sd:
            sd[key] = torch.zeros_like(value)
    load_strict(net, sd, path)
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class SyncResult:
    """Scores of one face track against its audio; ``framewise`` has one value per lip window."""

    offset: int              # frames; 0 when audio and lips are aligned
    lse_d: float             # mean distance at the best offset (lower is better)
    lse_c: float             # median minus minimum of the mean distances (higher is better)
    framewise: np.ndarray    # (n_windows,) median distance minus each window's distance at the best
                             # offset, median-filtered over FRAMEWISE_KERNEL windows

    def summary(self) -> dict:
        return {"offset": self.offset, "lse_d": self.lse_d, "lse_c": self.lse_c}


def median_filter(values: np.ndarray, kernel: int) -> np.ndarray:
    """scipy's ``medfilt``, zero-padded at both ends as the reference uses it (also when ``values`` is
    shorter than ``kernel``, which scipy warns about)."""
    import warnings

    from scipy.signal import medfilt

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "kernel_size exceeds volume extent", UserWarning)
        return medfilt(np.asarray(values, np.float64), kernel_size=kernel)


def mfcc(wav: np.ndarray) -> np.ndarray:
    """(13, T) MFCCs with python_speech_features' defaults (25 ms windows every 10 ms), computed on the
    raw int16 sample values as the reference does."""
    import python_speech_features

    return python_speech_features.mfcc(wav, SAMPLE_RATE).T


def n_windows(n_frames: int, n_samples: int) -> int:
    """Lip windows the reference scores: the shorter of video and audio, in frames, minus 5."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.inference_mode()
def embed_lips(net: SyncNet, faces: np.ndarray, count: int, batch_size: int = 20) -> torch.Tensor:
    """(count, 1024) embeddings of the 5-frame windows starting at frames 0..count-1, on the CPU."""
    out = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        clip = torch.from_numpy(np.ascontiguousarray(faces[start:stop + WINDOW - 1])).to(_device(net))
        clip = clip.permute(3, 0, 1, 2).float()  # (3, frames, H, W), BGR 0..255 as the reference feeds it
        windows = torch.stack([clip[:, i:i + WINDOW] for i in range(stop - start)])
        out.append(net.forward_lip(windows).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def embed_audio(net: SyncNet, coefficients: np.ndarray, count: int, batch_size: int = 20) -> torch.Tensor:
    """(count, 1024) embeddings of the 20-column MFCC windows aligned with lip windows 0..count-1."""
    cc = torch.from_numpy(coefficients).float().to(_device(net))
    span = WINDOW * MFCC_PER_FRAME
    out = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        windows = torch.stack([cc[None, :, i * MFCC_PER_FRAME:i * MFCC_PER_FRAME + span] for i in range(start, stop)])
        out.append(net.forward_aud(windows).float().cpu())
    return torch.cat(out)


def offset_distances(lips: torch.Tensor, audio: torch.Tensor, vshift: int) -> torch.Tensor:
    """(n, 2*vshift+1) distances: column j compares lip window i with audio window i + j - vshift (a
    zero vector beyond either end), with ``pairwise_distance``'s eps as in the reference."""
    n = lips.shape[0]
    padded = torch.nn.functional.pad(audio, (0, 0, vshift, vshift))
    return torch.stack([torch.nn.functional.pairwise_distance(lips, padded[j:j + n])
                        for j in range(2 * vshift + 1)], dim=1)


def scores_from_distances(dists: torch.Tensor, vshift: int) -> SyncResult:
    """Offset, LSE-D, LSE-C and the framewise confidence from :func:`offset_distances`."""
    mean = dists.mean(dim=0)
    best = int(torch.argmin(mean))
    median = torch.median(mean)  # 2*vshift+1 values: the true median
    framewise = (median - dists[:, best]).numpy()
    return SyncResult(offset=vshift - best, lse_d=float(mean[best]), lse_c=float(median - mean[best]),
                      framewise=median_filter(framewise, FRAMEWISE_KERNEL))


def evaluate_sync(net: SyncNet, faces: np.ndarray, wav: np.ndarray, vshift: int = VSHIFT,
                  batch_size: int = 20) -> SyncResult:
    """Score face crops against speech as the reference evaluation does.

    ``faces``: uint8 (N, 224, 224, 3) BGR crops at 25 fps; ``wav``: int16 mono samples at 16 kHz
    starting with the first crop.
    """
    if not isinstance(faces, np.ndarray):  # a memmap or an array stays as it is: no copy
        faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[1:] != (CROP, CROP, 3) or faces.dtype != np.uint8:
        raise ValueError(f"faces: expected uint8 (N, {CROP}, {CROP}, 3), got {faces.dtype} {faces.shape}")
    wav = np.asarray(wav)
    if wav.ndim != 1 or wav.dtype != np.int16:
        raise ValueError(f"wav: expected 1-D int16 samples at {SAMPLE_RATE} Hz, got {wav.dtype} {wav.shape}")
    count = n_windows(len(faces), len(wav))
    if count < 1:
        raise ValueError(f"too short to score: {len(faces)} frames and {len(wav) / SAMPLE_RATE:.3f} s of audio; "
                         f"at least {WINDOW + 1} frames ({(WINDOW + 1) / FPS:.2f} s) of both are needed")
    lips = embed_lips(net, faces, count, batch_size)
    audio = embed_audio(net, mfcc(wav), count, batch_size)
    return scores_from_distances(offset_distances(lips, audio, vshift), vshift)


def sync_scores(net: SyncNet, faces: np.ndarray, wav: np.ndarray, vshift: int = VSHIFT) -> dict:
    """``{"offset": int, "lse_d": float, "lse_c": float}`` of :func:`evaluate_sync`."""
    return evaluate_sync(net, faces, wav, vshift).summary()
