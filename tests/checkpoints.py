"""Random-weight checkpoints in the exact on-disk layout of the official files (tests only)."""
from __future__ import annotations

from pathlib import Path

import torch


def _randomize(module: torch.nn.Module, seed: int) -> dict:
    """State dict with seeded random weights and plausible BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in module.state_dict().items():
        if not v.is_floating_point():
            sd[k] = v.clone()
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.05
        elif v.dim() > 1:
            fan_in = v[0].numel()
            sd[k] = torch.randn(v.shape, generator=g) * (1.0 / fan_in) ** 0.5
        else:
            sd[k] = v.clone() + torch.randn(v.shape, generator=g) * 0.01
    return sd


def make_wav2lip_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Like ``wav2lip_gan.pth``: {state_dict: {"module." + key: tensor}, optimizer, global_step,
    global_epoch}, in torch's legacy (pre-zip) serialization of 2020."""
    from models.wav2lip import Wav2Lip

    model = Wav2Lip()
    sd = _randomize(model, seed)
    model.load_state_dict(sd)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.999))
    ckpt = {
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
        "optimizer": optimizer.state_dict(),
        "global_step": 123456,
        "global_epoch": 42,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    return path


def make_gfpgan_checkpoint(path: str | Path, seed: int = 0, key: str = "params_ema") -> Path:
    """Like ``GFPGANv1.4.pth``: {"params_ema": state_dict} (zip serialization, as basicsr saves)."""
    from models.restorer import build_gfpgan

    net = build_gfpgan()
    sd = _randomize(net, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: sd}, path)
    return path


def make_syncnet_checkpoint(path: str | Path, seed: int = 0, counters: bool = True) -> Path:
    """Like ``syncnet_v2.model``: a plain state dict of module ``S`` (no prefix, no wrapper) in torch's
    legacy (pre-zip) serialization. ``counters=False`` leaves out the BatchNorm ``num_batches_tracked``
    buffers, as files saved before PyTorch 0.4.1 do.

    The BatchNorm statistics are those of random inputs on the pixel and MFCC scales the network gets,
    and the last layers are scaled down, so embedding distances are of order 10, as a trained network's.
    """
    from collections import OrderedDict

    from models.syncnet import SyncNet

    net = SyncNet()
    net.load_state_dict(_randomize(net, seed))
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of the calibration batch
    net.train()
    with torch.no_grad():
        net.forward_lip(torch.rand((6, 3, 5, 224, 224), generator=g) * 255)
        net.forward_aud(torch.randn((6, 1, 13, 20), generator=g) * 20)
        for head in (net.netfcaud, net.netfclip):
            head[3].weight.mul_(0.1)
            head[3].bias.mul_(0.1)
    sd = OrderedDict((k, v.clone()) for k, v in net.state_dict().items()
                     if counters or not k.endswith("num_batches_tracked"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    return path
