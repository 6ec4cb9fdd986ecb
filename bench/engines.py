"""GFPGAN per face on each inference engine this CPU can use, against the large-conv floor, with each
engine's fidelity to torch fp32; and the paste-back at ``--upscale 2`` as a share of a face's cost.

    .venv/bin/python -m bench.engines [--rounds 5] [--json engines.json]

Benchmark 3 (``bench/run.py``) calls :func:`measure`. Engines are timed interleaved (one face on each,
in turn, ``rounds`` times) and the median per engine is reported: the machine is shared, and
interleaving spreads other users' load over all of them. The network is GFPGANv1Clean with its own
seeded initialisation (``torch.manual_seed(0)``; the compute of the published weights) on a real face
aligned from the first frame of the benchmark clip: the same set-up as ``tests/test_precision.py``, whose
bound (max 4 levels of 255, >= 99.9% of pixels within 2) decides which engine may be used.

Engines: torch fp32 and bf16 autocast (the pipeline before OpenVINO), torch.jit frozen +
optimize_for_inference (fp32), ONNX Runtime fp32 (when installed; its x86 CPU provider has no bf16
path), OpenVINO f32, OpenVINO bf16 over the whole graph, and OpenVINO bf16 with only convolutions and
matrix products in bf16 (``models/engines.py``, what ``--engine auto`` uses).

The paste-back is timed twice: in this process, right after each round's faces; and in a 1-thread Dask
worker of the flow's ``local_cluster`` (where the default plan runs it on up to 8 cores), right after each
face on the default engine there.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO.parent / "shared" / "media" / "talk_25fps_844.mp4"


def real_face(video: Path = VIDEO) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, aligned 512x512 face, its transform) from the first frame of ``video`` (CenterFace)."""
    import cv2

    from models.face_detection import CenterFaceDetector
    from models.restorer import align_face

    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"{video}: no frame")
    faces = CenterFaceDetector()(frame)
    if not faces:
        raise RuntimeError(f"{video}: no face in the first frame")
    aligned, m = align_face(frame, faces[0].landmarks)
    return frame, aligned, m


def fidelity(out: np.ndarray, ref: np.ndarray) -> dict:
    """Max and mean |out - ref| in levels of 255, and the share of values within 2 levels."""
    d = np.abs(out.astype(np.int16) - ref.astype(np.int16)).ravel()
    return {"max": int(d.max()), "within2": float(np.mean(d <= 2)), "mean": float(d.mean())}


def meets_bound(f: dict) -> bool:
    """tests/test_precision.py's bound: max 4 levels, >= 99.9% of pixels within 2."""
    return f["max"] <= 4 and f["within2"] >= 0.999


def _to_pixels(out: np.ndarray) -> np.ndarray:
    """(1, 3, 512, 512) network output in [-1, 1] -> BGR uint8, as restore_faces converts it."""
    return np.rint((np.clip(out[0], -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0)[..., ::-1]


def candidates(net: torch.nn.Module, tmp: Path, onnx_path: Path) -> dict[str, tuple[str, Callable]]:
    """name -> (precision for the floor, ``face -> restored face`` or an error string) for every engine."""
    from models import engines
    from models.restorer import restore_faces

    out: dict[str, tuple[str, Callable | str]] = {
        "torch fp32": ("fp32", lambda f: restore_faces(net, [f], "cpu", precision="fp32")[0]),
        "torch bf16 autocast": ("bf16", lambda f: restore_faces(net, [f], "cpu", precision="bf16")[0]),
    }
    try:  # a quick check of torch's own graph optimisations: trace, freeze, fold conv/bias/activations
        with torch.inference_mode():
            traced = torch.jit.trace(engines._Forward(net), torch.zeros(engines.INPUT_SHAPE), check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        out["torch.jit freeze + optimize_for_inference fp32"] = ("fp32", lambda f: _run_torch(frozen, f))
    except Exception as exc:  # noqa: BLE001 -- recorded as the result
        out["torch.jit freeze + optimize_for_inference fp32"] = ("fp32", f"failed: {type(exc).__name__}: {exc}"[:160])
    threads = torch.get_num_threads()
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        out[f"ONNX Runtime {ort.__version__} fp32"] = (
            "fp32", lambda f: _to_pixels(sess.run(None, {"face": _to_input(f).numpy()})[0]))
    except ImportError:
        out["ONNX Runtime fp32"] = ("fp32", "not installed (pip install onnxruntime to measure it)")
    if engines.openvino_available():
        import openvino as ov

        xml = engines.convert_gfpgan(net, tmp / "gfpgan.xml")
        version = ov.get_version().split("-")[0]
        for prec in ("fp32", "bf16"):
            compiled = engines.compile_ir(xml, prec, threads)
            out[f"OpenVINO {version} {prec}" + (": convs in bf16, rest fp32 (--engine auto)" if prec == "bf16" else "")] = (
                prec, lambda f, c=compiled: _to_pixels(c(_to_input(f)).numpy()))
        # the whole graph in bf16: the plugin's plain bf16 hint on the unmarked model
        whole = ov.Core().compile_model(ov.Core().read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False})
        out[f"OpenVINO {version} bf16, whole graph"] = (
            "bf16", lambda f: _to_pixels(whole({0: _to_input(f).numpy()})[0]))
    else:
        out["OpenVINO"] = ("bf16", "not installed")
    return out


def _to_input(face: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(face[..., ::-1]).astype(np.float32)).permute(2, 0, 1)[None]
    return x / 127.5 - 1.0


def _run_torch(module, face: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return _to_pixels(module(_to_input(face)).numpy())


def openvino_conv_rate(batch: int, precision: str, repeats: int = 3) -> float | None:
    """FLOP/s of bench.run's large conv (batch x 256 x 56 x 56, 3x3, 256 out) on OpenVINO, or None."""
    from models import engines

    if not engines.openvino_available():
        return None
    import openvino as ov
    import openvino.opset10 as ops

    x = ops.parameter([batch, 256, 56, 56], np.float32)
    w = ops.constant(np.random.default_rng(0).standard_normal((256, 256, 3, 3)).astype(np.float32) * 0.02)
    conv = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    compiled = ov.Core().compile_model(ov.Model([conv], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": engines.OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False})
    data = np.random.default_rng(1).standard_normal((batch, 256, 56, 56)).astype(np.float32)
    request = compiled.create_infer_request()
    request.infer({0: data})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: data})
        best = min(best, time.perf_counter() - t)
    return 2 * batch * 256 * 256 * 9 * 56 * 56 / best


def paste_back_time(frame: np.ndarray, restored: np.ndarray, m: np.ndarray) -> float:
    """Seconds of restore_frames's work besides the network at ``--upscale 2`` for one frame with one face,
    by the function it calls (the frame's 2x Lanczos but where the face will cover it, then the warp and
    feathered blend of the face)."""
    from models.restorer import paste_back

    t = time.perf_counter()
    paste_back(frame, [restored], [m], 2)
    return time.perf_counter() - t


def measure(rounds: int = 5, conv_batch: int = 64, rates: dict | None = None) -> dict:
    """Every engine: median s/face over ``rounds`` interleaved rounds, x of the floor at its precision
    (torch's conv rate on the large conv, as benchmark 3 defines it; ``rates``: precision -> FLOP/s if
    already measured), OpenVINO's own rate on that conv, fidelity to torch fp32; and the paste-back."""
    from bench.load import CpuShare
    from bench.run import conv_rate
    from models import engines
    from models.restorer import build_gfpgan

    frame, face, m = real_face()
    torch.manual_seed(0)
    net = build_gfpgan().eval()
    with torch.inference_mode():
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            net(torch.zeros(engines.INPUT_SHAPE), return_rgb=False, randomize_noise=False)
    flops = fc.get_total_flops()
    rates = dict(rates or {})
    for p in ("fp32", "bf16"):
        rates.setdefault(p, conv_rate(conv_batch, p))
    ov_rates = {p: openvino_conv_rate(conv_batch, p) for p in ("fp32", "bf16")}
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        onnx_path = Path(tmp) / "gfpgan.onnx"
        with torch.inference_mode():
            torch.onnx.export(engines._Forward(net), torch.zeros(engines.INPUT_SHAPE), str(onnx_path),
                              opset_version=17, dynamo=False, input_names=["face"], output_names=["restored"])
        runs = candidates(net, Path(tmp), onnx_path)
        ref = runs["torch fp32"][1](face)
        res: dict = {}
        for name, (prec, fn) in runs.items():
            if isinstance(fn, str):
                res[name] = {"precision": prec, "error": fn}
                continue
            out = fn(face)  # first call: set-up, not timed
            res[name] = {"precision": prec, "times": [], **fidelity(out, ref)}
            res[name]["deterministic"] = bool(np.array_equal(out, fn(face)))
        live = [n for n in runs if "times" in res[n]]
        paste = []
        with CpuShare() as share:
            for _ in range(rounds):
                for name in live:
                    t = time.perf_counter()
                    runs[name][1](face)
                    res[name]["times"].append(time.perf_counter() - t)
                # in each round, right after a face (as enhance_chunk pastes it): the same machine state
                paste.append(paste_back_time(frame, ref, m))
    for name in live:
        r = res[name]
        r["s_per_face"] = statistics.median(r["times"])
        r["x_floor"] = r["s_per_face"] / (flops / rates[r["precision"]])
        r["meets_bound"] = meets_bound(r)
    return {"engines": res, "flops_per_face": flops, "conv_rate": rates, "openvino_conv_rate": ov_rates,
            "rounds": rounds, "threads": torch.get_num_threads(), "others_cores": share.others,
            "load_average": os.getloadavg()[0], "paste_back_2x_s": statistics.median(paste)}


def worker_paste_back(rounds: int, precision: str) -> dict:
    """A face and the paste-back after it where the default plan runs them on a machine of up to 8 cores: a
    1-thread worker made by the flow's own ``local_cluster`` (its environment and thread pinning), GFPGAN
    compiled there as ``--engine auto`` compiles it, ``rounds`` faces each followed by its paste-back."""
    from distributed import Client

    from bench.load import CpuShare
    from flows.runners import local_cluster

    with local_cluster(1, 1) as cluster, Client(cluster) as client, CpuShare() as share:
        r = client.submit(_faces_then_paste_backs, rounds, precision, pure=False).result()
    return {**r, "others_cores": share.others}


def _faces_then_paste_backs(rounds: int, precision: str) -> dict:
    import cv2

    from models import engines
    from models.loading import pin_threads
    from models.restorer import build_gfpgan, restore_faces

    pin_threads()
    frame, face, m = real_face()
    torch.manual_seed(0)
    net, engine = build_gfpgan().eval(), engines.resolve_engine("auto", "cpu")
    if engine == "openvino":
        net = engines.compile_network(net, precision)
    restore_faces(net, [face], "cpu", precision=precision)  # first call: set-up, not timed
    faces, pastes = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        restored = restore_faces(net, [face], "cpu", precision=precision)[0]
        faces.append(time.perf_counter() - t)
        pastes.append(paste_back_time(frame, restored, m))
    return {"threads": torch.get_num_threads(), "opencv_threads": cv2.getNumThreads(), "rounds": rounds,
            "engine": engine, "precision": precision, "s_per_face": statistics.median(faces),
            "paste_back_2x_s": statistics.median(pastes)}


def fastest_face(r: dict) -> float:
    """Seconds per face of the fastest engine within the fidelity bound."""
    return min(e["s_per_face"] for e in r["engines"].values() if e.get("meets_bound"))


def rows(r: dict) -> list[tuple[str, str]]:
    """(what, value) lines for benchmark 3's table."""
    out = []
    floor = {p: r["flops_per_face"] / rate for p, rate in r["conv_rate"].items()}
    for name, e in r["engines"].items():
        if "error" in e:
            out.append((f"GFPGAN on {name}", e["error"]))
            continue
        out.append((f"GFPGAN on {name}", f"{e['s_per_face']:.2f} s/face = {e['x_floor']:.2f}x {e['precision']} floor "
                    f"({floor[e['precision']]:.2f} s); vs torch fp32: max {e['max']}/255, {e['within2']:.3%} within 2"
                    f" ({'meets' if e['meets_bound'] else 'MISSES'} the bound)"
                    + ("" if e["deterministic"] else "; NOT deterministic")))
    ov = ", ".join(f"{p} {v / 1e9:.0f}" for p, v in r["openvino_conv_rate"].items() if v)
    if ov:
        out.append(("  the large conv on OpenVINO (same shape)", f"{ov} GFLOP/s"))
    best = fastest_face(r)
    out.append(("paste-back at --upscale 2 (Lanczos 2x of the frame + warp and blend of one face, in each round "
                "right after the faces)", f"{r['paste_back_2x_s'] * 1e3:.0f} ms/frame = "
                f"{r['paste_back_2x_s'] / best:.1%} of the fastest engine's face ({best:.2f} s)"))
    out.append(("  conditions", f"median of {r['rounds']} interleaved rounds, {r['threads']} threads; others used "
                f"{r['others_cores']:.1f} cores meanwhile, load average {r['load_average']:.1f}"))
    if "worker" in r:
        out.append(worker_row(r["worker"]))
    return out


def worker_row(w: dict) -> tuple[str, str]:
    """(what, value) of :func:`worker_paste_back`'s result for benchmark 3's table."""
    return ("paste-back at --upscale 2 in a 1-thread Dask worker (the default plan here), right after each face "
            f"on {w['engine']} {w['precision']}", f"{w['paste_back_2x_s'] * 1e3:.0f} ms/frame = {worker_share(w):.1%} "
            f"of its face ({w['s_per_face']:.2f} s); median of {w['rounds']}, torch {w['threads']} / OpenCV "
            f"{w['opencv_threads']} threads, others used {w['others_cores']:.1f} cores")


def worker_share(w: dict) -> float:
    """The paste-back's share of a face in :func:`worker_paste_back`'s result."""
    return w["paste_back_2x_s"] / w["s_per_face"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--conv-batch", type=int, default=64)
    p.add_argument("--threads", type=int, help="torch and engine threads (default: torch's)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} at start, {torch.get_num_threads()} threads", flush=True)
    from models.precision import resolve_precision

    r = measure(args.rounds, args.conv_batch)
    r["worker"] = worker_paste_back(args.rounds, resolve_precision("auto", "cpu"))
    for what, value in rows(r):
        print(f"{what}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
