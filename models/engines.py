"""The CPU inference engine of Wav2Lip and GFPGAN: OpenVINO when it is installed, torch otherwise (and
always on CUDA).

Measured here (``bench/engines.py``, README "Performance"; 2 threads, quiet): OpenVINO runs
GFPGANv1Clean in bf16 about 4x faster than torch's bf16 autocast (0.43 vs 1.61 s/face), within the
fidelity bound of ``tests/test_precision.py``; in fp32 1.7x faster than torch fp32 (1.37 vs 2.33), within a
level. Wav2Lip in bf16: 4.8 ms/frame against torch's 15.5 (batch 16), within a level of fp32.

How a network becomes an OpenVINO model, once per weights file (cached on disk as IR, see
:func:`ir_path`). Wav2Lip, plain convolutions, is converted from the torch module directly with a free
batch dimension. GFPGAN is exported to ONNX (opset 17, the TorchScript exporter; the dynamo exporter is
not needed), read by OpenVINO, its Interpolate-11 nodes rewritten as the equivalent Interpolate-4, and
every node except convolutions and matrix products marked to keep fp32.

Why the marks: OpenVINO's bf16 hint otherwise runs the whole graph in bf16, including the StyleGAN
decoder's weight demodulation and the RGB skip path that accumulates the picture over seven resolutions;
that moved 6% of pixels by more than 2 levels (max 5). Marked, only the convolutions and the style
MLP's matrix products run in bf16, as under torch's autocast, and the result is within 2 levels. The
mark is the ``DisablePrecisionConversion`` runtime attribute, set in the IR (the Python API has no call
for it); the CPU plugin keeps a marked node in its original precision. It drops the attribute when it
replaces a node, which it does for Interpolate-11: hence the rewrite to Interpolate-4, which it keeps
(and whose fp32 kernel is also faster here than its bf16 one).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

ENGINES = ("auto", "torch", "openvino")
# bump when the conversion below changes: the IR cached on disk is keyed by it
IR_VERSION = "1"
# node types left free to run in bf16 (everything else is marked to stay fp32)
LOW_PRECISION_TYPES = {"Convolution", "GroupConvolution", "MatMul"}
UNMARKED_TYPES = LOW_PRECISION_TYPES | {"Parameter", "Result", "Const"}
KEEP_FP32 = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
INPUT_SHAPE = (1, 3, 512, 512)  # GFPGAN's export
NETWORKS = ("gfpgan", "wav2lip")


def openvino_available() -> bool:
    """True when the ``openvino`` package (and ``onnx``, which the export needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str, device: torch.device | str) -> str:
    """The engine actually used: ``auto`` is OpenVINO on a CPU when installed, else torch; an explicit
    ``openvino`` on CUDA or without the package is an error (never silently another engine)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        return "openvino" if on_cpu and openvino_available() else "torch"
    if engine == "openvino":
        if not on_cpu:
            raise ValueError(f"engine openvino runs on the CPU, not {device}; use torch or auto")
        if not openvino_available():
            raise ValueError("engine openvino: the openvino and onnx packages are not installed "
                             "(pip install openvino onnx), or use --engine torch")
    return engine


class _Forward(torch.nn.Module):
    """GFPGAN's forward as restore_faces calls it: fixed noise, the restored image only."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, return_rgb=False, randomize_noise=False)[0]


def _rewrite_interpolate(model) -> int:
    """Replace each Interpolate-11 by the same Interpolate-4 (the CPU plugin keeps v4 nodes, and their
    fp32 marks with them); returns how many were replaced."""
    import openvino.opset10 as ops  # opset10's interpolate is Interpolate-4

    n = 0
    for op in model.get_ops():
        if op.get_type_name() != "Interpolate" or op.get_type_info().version_id != "opset11":
            continue
        a = op.get_attributes()
        sizes = np.array(list(op.get_output_shape(0)), np.int64)  # ignored in "scales" mode, but required
        axes = np.arange(len(sizes), dtype=np.int64)
        scales = op.input_value(1)
        if a["shape_calculation_mode"] != "scales":
            raise ValueError(f"unexpected Interpolate mode {a['shape_calculation_mode']!r} in the export")
        new = ops.interpolate(op.input_value(0), ops.constant(sizes), scales, a["mode"], "scales",
                              list(a["pads_begin"]), list(a["pads_end"]), a["coordinate_transformation_mode"],
                              a["nearest_mode"], a["antialias"], a["cube_coeff"], axes=ops.constant(axes))
        new.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(new.output(0))
        n += 1
    model.validate_nodes_and_infer_types()
    return n


def _mark_fp32(xml_path: Path) -> int:
    """Mark every node but convolutions and matrix products to keep fp32 (in the IR file, in place)."""
    tree = ET.parse(xml_path)
    n = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in UNMARKED_TYPES:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.SubElement(layer, "rt_info")
        ET.SubElement(rt, "attribute", KEEP_FP32)
        n += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return n


@contextlib.contextmanager
def _written_atomically(xml_path: Path):
    """Yields a temporary ``.xml`` path beside ``xml_path``; once the IR is written there, moves the pair
    into place: the files appear complete or not at all (the ``.xml``, renamed last, is the sign)."""
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=xml_path.parent) as tmp:
        tmp_xml = Path(tmp) / "model.xml"
        yield tmp_xml
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)


def convert_gfpgan(net: torch.nn.Module, xml_path: str | Path) -> Path:
    """Write GFPGAN ``net`` as OpenVINO IR (``xml_path`` and its ``.bin``), atomically."""
    import openvino as ov

    xml_path = Path(xml_path)
    with _written_atomically(xml_path) as tmp_xml:
        onnx_path = tmp_xml.with_suffix(".onnx")
        # the TorchScript exporter warns that it is legacy, and the tracer about GFPGAN's int() of a
        # shape: both known, neither an error (the shape is fixed at 1x3x512x512)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Forward(net.float().cpu().eval()), torch.zeros(INPUT_SHAPE), str(onnx_path),
                              opset_version=17, dynamo=False, input_names=["face"], output_names=["restored"])
        model = ov.Core().read_model(str(onnx_path))
        _rewrite_interpolate(model)
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)  # fp32 weights: bf16 is a run-time choice
        _mark_fp32(tmp_xml)
    return xml_path


def convert_wav2lip(net: torch.nn.Module, xml_path: str | Path) -> Path:
    """Write Wav2Lip ``net`` as OpenVINO IR, its batch dimension free, atomically. Unmarked: its whole
    graph in bf16 stays within a level of fp32 (closer than torch's autocast)."""
    import openvino as ov

    from models.audio import MEL_STEP
    from models.wav2lip import FACE_SIZE

    xml_path = Path(xml_path)
    example = (torch.zeros(2, 1, 80, MEL_STEP), torch.zeros(2, 6, FACE_SIZE, FACE_SIZE))
    with _written_atomically(xml_path) as tmp_xml, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on a module it converts whole
        model = ov.convert_model(net.float().cpu().eval(), example_input=example,
                                 input=[[-1, 1, 80, MEL_STEP], [-1, 6, FACE_SIZE, FACE_SIZE]])
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
    return xml_path


CONVERT = {"gfpgan": convert_gfpgan, "wav2lip": convert_wav2lip}


def ir_path(cache_dir: str | Path, digest: str, network: str = "gfpgan") -> Path:
    """Where the IR of ``network``'s weights with SHA-256 ``digest`` is cached: keyed by the weights,
    the OpenVINO version and :data:`IR_VERSION`."""
    import openvino as ov

    version = ov.get_version().split("-")[0]
    return Path(cache_dir) / f"{network}-{digest[:16]}-ov{version}-ir{IR_VERSION}.xml"


class OpenVINOModel:
    """A compiled network, called like its torch module: torch tensors in, a float tensor out.
    Thread-safe: each call has its own infer request."""

    engine = "openvino"

    def __init__(self, compiled, precision: str, threads: int) -> None:
        self.compiled, self.precision, self.threads = compiled, precision, threads

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        request = self.compiled.create_infer_request()
        request.infer({k: np.ascontiguousarray(x.detach().float().cpu().numpy()) for k, x in enumerate(inputs)})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


class OpenVINOGFPGAN(OpenVINOModel):
    """GFPGAN as restore_faces calls it: ``(N, 3, 512, 512)`` floats in [-1, 1] -> the restored faces,
    same layout. Faces run one per inference (the export has batch 1; one face per call is also the CPU
    default)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(OpenVINOGFPGAN, self).__call__(face[None]) for face in x])


class OpenVINOWav2Lip(OpenVINOModel):
    """Wav2Lip: mel windows ``(B, 1, 80, 16)`` and faces ``(B, 6, 96, 96)`` -> faces ``(B, 3, 96, 96)``,
    any batch in one inference."""


WRAPPERS = {"gfpgan": OpenVINOGFPGAN, "wav2lip": OpenVINOWav2Lip}


def compile_ir(xml_path: str | Path, precision: str, threads: int, network: str = "gfpgan") -> OpenVINOModel:
    """Compile ``network``'s IR for the CPU at ``precision`` (fp32 or bf16) with ``threads`` inference
    threads."""
    import openvino as ov

    if precision not in OV_PRECISION:
        raise ValueError(f"engine openvino runs fp32 or bf16, not {precision!r}")
    config = {
        # explicit: on CPUs with AMX the plugin's default is bf16, which fp32 must not silently become
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        # Dask workers share the machine: two one-thread workers must not pin themselves to one core
        "ENABLE_CPU_PINNING": False,
    }
    compiled = ov.Core().compile_model(str(xml_path), "CPU", config)
    return WRAPPERS[network](compiled, precision, threads)


def compile_network(net: torch.nn.Module, precision: str, threads: int | None = None,
                    network: str = "gfpgan") -> OpenVINOModel:
    """``net`` converted and compiled without a disk cache (for networks that have no weights file)."""
    with tempfile.TemporaryDirectory(prefix="wav2lip-hq-ov-") as tmp:
        xml = CONVERT[network](net, Path(tmp) / f"{network}.xml")
        return compile_ir(xml, precision, threads or torch.get_num_threads(), network)


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached(network: str, weights: str, digest: str, precision: str, threads: int,
            cache_dir: str) -> OpenVINOModel:
    xml = ir_path(cache_dir, digest, network)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        from models.loading import load_network

        net = load_network(network, weights)  # only to convert: the compiled model keeps its own weights
        try:
            CONVERT[network](net, xml)
        except OSError:  # a read-only models directory: convert for this process only
            return compile_network(net, precision, threads, network)
        del net
    return compile_ir(xml, precision, threads, network)


def openvino_network(network: str, weights: str | Path, digest: str, precision: str, cache_dir: str | Path,
                     threads: int | None = None) -> OpenVINOModel:
    """The compiled ``network`` (gfpgan or wav2lip) for a weights file (SHA-256 ``digest``), once per
    process per precision and thread count; its IR is converted once per weights file into ``cache_dir``."""
    if network not in NETWORKS:
        raise ValueError(f"no OpenVINO conversion for {network!r}")
    threads = threads or torch.get_num_threads()
    with _LOCK:  # threads of one worker must not convert the same model twice
        return _cached(network, str(weights), digest, precision, threads, str(cache_dir))


def clear_cache() -> None:
    """Forget the compiled models of this process (tests)."""
    _cached.cache_clear()

