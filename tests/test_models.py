"""Wav2Lip generator and GFPGAN loading, the weight manifest, fetch and verify."""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.wav2lip import Wav2Lip, load_wav2lip
from tests.checkpoints import make_gfpgan_checkpoint, make_wav2lip_checkpoint

# Output size of each face-encoder block for a 96x96 input (spec table).
ENCODER_SHAPES = [(16, 96), (32, 48), (64, 24), (128, 12), (256, 6), (512, 3), (512, 1)]
DECODER_SHAPES = [(512, 1), (512, 3), (512, 6), (384, 12), (256, 24), (128, 48), (64, 96)]


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    return make_wav2lip_checkpoint(tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth", seed=3)


def test_official_layout_loads_strictly(official_ckpt):
    raw = torch.load(official_ckpt, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    model = load_wav2lip(official_ckpt, "cpu")
    assert not model.training
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 36.3e6) < 0.05e6
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["state_dict"][f"module.{k}"]), k


def test_bare_state_dict_loads(tmp_path):
    sd = Wav2Lip().state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    model = load_wav2lip(tmp_path / "bare.pth")
    assert torch.equal(model.state_dict()["output_block.1.weight"], sd["output_block.1.weight"])


def test_state_dict_names_follow_the_published_tree():
    keys = set(Wav2Lip().state_dict())
    for k in ["face_encoder_blocks.0.0.conv_block.0.weight", "face_encoder_blocks.6.1.conv_block.1.running_var",
              "audio_encoder.12.conv_block.0.weight", "face_decoder_blocks.6.2.conv_block.1.num_batches_tracked",
              "output_block.0.conv_block.0.weight", "output_block.1.weight", "output_block.1.bias"]:
        assert k in keys
    assert sum(k.startswith("audio_encoder.") and k.endswith("conv_block.0.weight") for k in keys) == 13


def test_forward_shapes_follow_the_spec(official_ckpt):
    model = load_wav2lip(official_ckpt)
    enc, dec = [], []
    for b in model.face_encoder_blocks:
        b.register_forward_hook(lambda m, i, o: enc.append(tuple(o.shape[1:])))
    for b in model.face_decoder_blocks:
        b.register_forward_hook(lambda m, i, o: dec.append(tuple(o.shape[1:])))
    audio_out = []
    model.audio_encoder.register_forward_hook(lambda m, i, o: audio_out.append(tuple(o.shape[1:])))
    with torch.inference_mode():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert enc == [(c, s, s) for c, s in ENCODER_SHAPES]
    assert dec == [(c, s, s) for c, s in DECODER_SHAPES]
    assert audio_out == [(512, 1, 1)]


def test_wrong_keys_are_named(tmp_path):
    sd = {f"module.{k}": v for k, v in Wav2Lip().state_dict().items()}
    sd["module.extra_head.weight"] = torch.zeros(1)
    del sd["module.output_block.1.bias"]
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_wav2lip(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg and "output_block.1.bias" in msg and "extra_head.weight" in msg
    assert "missing" in msg and "unexpected" in msg


class Payload:
    """Something that is not a tensor: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"not a plain tensor checkpoint: it is a pickle") as err:
        load_wav2lip(path)
    assert "weights_only" not in str(err.value)  # torch's advice to turn it off is not repeated


def test_code_in_a_torch_save_file_is_named_and_never_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"it carries Python code \(print\), which is never run"):
        load_wav2lip(path)


def test_random_bytes_are_not_called_a_payload(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CheckpointError, match=r"noise.pth: not a PyTorch checkpoint \(unreadable content\)"):
        load_wav2lip(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth"):
        load_wav2lip(path)


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_gfpgan_checkpoint_layouts(tmp_path, key):
    from models.restorer import load_gfpgan

    path = make_gfpgan_checkpoint(tmp_path / "GFPGANv1.4.pth", seed=5, key=key)
    net = load_gfpgan(path)
    saved = torch.load(path, weights_only=True)[key]
    assert not net.training
    assert abs(sum(p.numel() for p in net.parameters()) - 86.4e6) < 0.1e6
    name = next(iter(saved))
    assert torch.equal(net.state_dict()[name], saved[name])


def test_gfpgan_prefers_params_ema(tmp_path):
    from models.restorer import build_gfpgan, load_gfpgan

    sd = build_gfpgan().state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"params": sd, "params_ema": ema}, tmp_path / "g.pth")
    net = load_gfpgan(tmp_path / "g.pth")
    k = "final_linear.weight"
    assert torch.equal(net.state_dict()[k], ema[k])


# ------------------------------------------------------------------------------------ weights
def test_missing_weight_error_names_file_place_and_command(tmp_path, monkeypatch):
    from models.weights import MissingWeightsError, require

    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        require("GFPGANv1.4.pth")
    msg = str(err.value)
    assert "GFPGANv1.4.pth" in msg and str(tmp_path) in msg and "wav2lip-hq models fetch GFPGANv1.4.pth" in msg


def test_manifest_is_complete():
    from models.weights import DEFAULT_SET, MANIFEST

    for name in ["wav2lip_gan.pth", "wav2lip.pth", "GFPGANv1.4.pth", "GFPGANv1.3.pth", "s3fd-619a316812.pth"]:
        w = MANIFEST[name]
        assert w.urls and all(u.startswith("https://") for u in w.urls)
        assert w.sha256 and len(w.sha256) == 64 and w.size > 1_000_000
    assert MANIFEST["s3fd-619a316812.pth"].sha256.startswith("619a316812")  # torch.hub naming
    assert DEFAULT_SET[0] == "wav2lip_gan.pth"


def _fake_entry(monkeypatch, tmp_path, payload: bytes, sha: str):
    from models import weights

    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    entry = weights.WeightFile("wav2lip.pth", ("file:///nonexistent/mirror.pth", src.as_uri()), sha,
                               len(payload), "test")
    monkeypatch.setitem(weights.MANIFEST, "wav2lip.pth", entry)
    monkeypatch.setenv("WAV2LIP_HQ_MODELS_DIR", str(tmp_path / "models"))
    return weights


def test_fetch_verifies_and_moves_into_place(tmp_path, monkeypatch):
    payload = np.random.default_rng(0).bytes(3_000_000)
    weights = _fake_entry(monkeypatch, tmp_path, payload, hashlib.sha256(payload).hexdigest())
    path = weights.fetch("wav2lip.pth", progress=False)
    assert path == tmp_path / "models" / "wav2lip.pth"
    assert path.read_bytes() == payload
    assert weights.verify("wav2lip.pth")[0]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == []


def test_fetch_with_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    payload = b"x" * 1000
    weights = _fake_entry(monkeypatch, tmp_path, payload, "0" * 64)
    with pytest.raises(ConnectionError) as err:
        weights.fetch("wav2lip.pth", progress=False)
    assert "does not match" in str(err.value) and "place it at" in str(err.value)
    assert list((tmp_path / "models").iterdir()) == []


def test_verify_reports_a_corrupted_file(tmp_path, monkeypatch):
    payload = b"y" * 5000
    weights = _fake_entry(monkeypatch, tmp_path, payload, hashlib.sha256(payload).hexdigest())
    weights.fetch("wav2lip.pth", progress=False)
    dest = tmp_path / "models" / "wav2lip.pth"
    dest.write_bytes(b"z" * 5000)  # same size, other content
    ok, msg = weights.verify("wav2lip.pth")
    assert not ok and "SHA-256" in msg and "does not match" in msg


def test_out_of_memory_halves_the_batch():
    from models.batching import split_on_oom

    sizes = []

    def net(a, b):
        sizes.append(a.shape[0])
        if a.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return a * 2 + b

    a, b = torch.arange(7.0), torch.ones(7)
    assert torch.equal(split_on_oom(net, a, b), a * 2 + b)
    assert sizes == [7, 3, 1, 2, 4, 2, 2]  # halves until each part fits, in order

    def always(a):
        raise torch.OutOfMemoryError("no memory at all")

    with pytest.raises(torch.OutOfMemoryError):
        split_on_oom(always, torch.zeros(4))
