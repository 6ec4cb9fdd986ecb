"""Every option a user sets, defined once: name, type, default, choices or limits, help.

The Prefect flow's parameters (the UI form and ``prefect deployment run -p``), the CLI's flags and the
README's option table are all derived from :class:`JobInputs` and :class:`RunOptions`, so they cannot
disagree. Stages receive the validated :class:`RunOptions` and name the fields their output depends on.
"""
from __future__ import annotations

import argparse
import inspect
from typing import Annotated, Any, Literal, get_args, get_origin

from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

# a positive count, or "auto": the run works it out (the CLI takes either; the limits are the integer's)
CountOrAuto = Annotated[int, Ge(1)] | Literal["auto"]


def option(default: Any, help: str, *, flag: str | None = None, **limits: Any) -> Any:
    """A field with its help text; ``flag`` overrides the CLI flag derived from the name."""
    return Field(default, description=help, json_schema_extra={"flag": flag} if flag else None, **limits)


class JobInputs(BaseModel):
    """What one job reads and writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    audio: str = option(..., "Speech to lip-sync to: a path or URL (wav, mp3, m4a, aac, flac, or a video whose "
                        "audio track is used).")
    video: str = option(..., "Talking-face video, or a still portrait image (jpg/png): a path or URL.")
    output: str = option(..., "Where the final video is written (path or URL, e.g. s3://bucket/out.mp4); it "
                         "appears only when complete.", flag="-o/--output")


class RunOptions(BaseModel):
    """How a job is run; every field has the default that gives the best picture."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str = option(
        "wav2lip_gan.pth", "Wav2Lip weights: wav2lip_gan.pth (sharper, GAN-trained), wav2lip.pth (sync expert "
        "only), or the path or URL of your own checkpoint in the official layout (e.g. fine-tuned).", min_length=1)
    gfpgan: str = option(
        "1.4", "Face restorer weights: 1.4, 1.3 (GFPGAN releases), or the path or URL of a checkpoint in the "
        "GFPGAN v1.3/v1.4 layout.", min_length=1)
    blend: float = option(1.0, "Restoration strength: 1 = restored face only, 0 = the lip-synced face unchanged.",
                          ge=0.0, le=1.0)
    upscale: Literal[1, 2] = option(1, "Output size factor (1 or 2); the background is upscaled with Lanczos.")
    enhance: bool = option(True, "Run GFPGAN on the faces; off gives the plain Wav2Lip result, re-encoded.",
                           flag="--no-enhance")
    still_fps: float = option(25.0, "Frames per second when the video is a single image.", flag="--fps",
                              gt=0, le=120)
    on_no_face: Literal["pass", "fail"] = option(
        "pass", "Frames without a face: pass keeps them unchanged, fail stops with an error naming the first one.")
    pads: tuple[int, int, int, int] = option(
        (0, 10, 0, 0), "Pixels added to the detected face box: top, bottom, left, right (bottom 10 keeps the chin).")
    smooth: bool = option(True, "Steady faces: each face track's box and landmarks are smoothed over time "
                          "(centred Savitzky-Golay, never across a shot cut); off uses raw detections.",
                          flag="--no-smooth")
    mask: Literal["feather", "box"] = option(
        "feather", "How the lip-synced mouth is blended in: feather (mouth and chin generated, edges faded: no "
        "seam) or box (the reference's paste of the whole box).")
    face: str = option(
        "auto", "Which face is lip-synced: auto (the face on screen longest), largest, center, a track number N "
        "(see wav2lip-hq faces), or a point X,Y in pixels inside the face; chosen per shot, never switching.")
    restore: Literal["all", "speaker"] = option(
        "all", "Faces GFPGAN restores: all faces, or only the lip-synced speaker.")
    loop: Literal["pingpong", "forward"] = option(
        "pingpong", "When the audio outlasts the video: pingpong (play it backward, then forward: no jump) or "
        "forward (start again from the first frame).")
    box: tuple[int, int, int, int] | None = option(
        None, "Lip-sync inside this fixed region in every frame instead of the detected face: top bottom left "
        "right, in pixels (the reference's --box).")
    detector: Literal["centerface", "s3fd"] = option(
        "centerface", "Face detector: centerface (ships with the package) or s3fd (the reference's; needs "
        "s3fd-619a316812.pth).")
    crf: int = option(18, "H.264 quality of the final encode, 0-51: lower is better and bigger; 18 looks lossless.",
                      ge=0, le=51)
    preset: Literal["ultrafast", "veryfast", "fast", "medium", "slow"] = option(
        "medium", "H.264 encoder speed/size trade-off.")
    chunk_frames: CountOrAuto = option(
        "auto", "Frames per enhancement chunk, at most (chunks are cut even); chunks run in parallel on the Dask "
        "workers. auto: sized from the frame count and the workers available, at least two chunks per worker "
        "when the clip is long enough.")
    batch_size: int = option(0, "Frames per Wav2Lip generator call; 0 = automatic (16 on CPU, 128 on CUDA).",
                             ge=0, le=512)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "auto (bf16 on CPUs with bf16 instructions, fp16 on CUDA, else fp32), fp32 (exact), or bf16 / "
        "fp16 autocast; restored faces stay within 4/255 of fp32 (99.9% of pixels within 2).")
    engine: Literal["auto", "torch", "openvino"] = option(
        "auto", "Inference engine of Wav2Lip and GFPGAN: auto (OpenVINO on a CPU when installed, about 3x and "
        "4x faster in bf16; torch on CUDA or without it), torch, or openvino (CPU only); same fidelity bound as "
        "--precision.")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    work_dir: str | None = option(
        None, "Where stage outputs are kept for reuse: a path or URL such as s3://bucket/work (default: "
        "$WAV2LIP_HQ_WORK_DIR or the user cache).")
    refresh: bool = option(False, "Recompute every stage even when its output is already in the work area.")
    dask_address: str | None = option(
        None, "tcp://host:8786 of an existing Dask scheduler whose workers import this project (default: "
        "$WAV2LIP_HQ_DASK_ADDRESS, else a local cluster sized to the machine).")
    dask_workers: int | None = option(
        None, "Workers of the local Dask cluster (default: one per core or GPU; 0: no Dask).", ge=0)


    @field_validator("face")
    @classmethod
    def _face(cls, value: str) -> str:
        from models.face_track import parse_face

        parse_face(value)
        return value.strip().replace(" ", "")

    @field_validator("box")
    @classmethod
    def _box(cls, value: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if value is not None:
            top, bottom, left, right = value
            if min(value) < 0 or bottom - top < 2 or right - left < 2:
                raise ValueError("top bottom left right in pixels, with top < bottom and left < right "
                                 "(at least 2 pixels apart)")
        return value


PARAMETERS: dict[str, FieldInfo] = {**JobInputs.model_fields, **RunOptions.model_fields}


# ------------------------------------------------------------------------------------ the flow
def flow_parameters(fn):
    """Give ``fn(audio, video, output, **options)`` the typed keyword parameters and the ``Args:``
    docstring of :data:`PARAMETERS`, which Prefect turns into the flow's parameter schema (the UI
    form: field types, defaults, limits, descriptions). Apply before ``@flow``."""
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_annotation(f),
                                default=inspect.Parameter.empty if f.is_required() else f.default)
              for name, f in PARAMETERS.items()]
    fn.__signature__ = inspect.Signature(params, return_annotation=inspect.signature(fn).return_annotation)
    fn.__annotations__ = {p.name: p.annotation for p in params}
    args = "\n".join(f"    {name}: {f.description}" for name, f in PARAMETERS.items())
    fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n"
    return fn


def _annotation(f: FieldInfo) -> Any:
    return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation


# -------------------------------------------------------------------------------------- the CLI
def cli_flags(name: str) -> list[str]:
    f = PARAMETERS[name]
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    return str(extra.get("flag") or "--" + name.replace("_", "-")).split("/")


def _four_ints(what: str):
    def parse(text: str) -> tuple[int, ...]:
        try:
            parts = tuple(int(p) for p in text.replace(",", " ").split())
        except ValueError:
            parts = ()
        if len(parts) != 4:
            raise argparse.ArgumentTypeError(f"four integers: {what}")
        return parts
    return parse


FOUR_INTS = {"pads": "top bottom left right", "box": "top bottom left right"}


def add_cli_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None,
                      help: dict[str, str] | None = None) -> None:
    """One argparse flag per parameter; limits are checked by :func:`parse_options`, not here. ``help``
    rewords a parameter for a command where it means something else (the preview's output is an image)."""
    for name in names or list(PARAMETERS):
        f = PARAMETERS[name]
        flags, help_text = cli_flags(name), _sentence((help or {}).get(name, f.description))
        kwargs: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}  # argparse formats help
        choices = _choices(f.annotation)
        if f.annotation is bool:
            negated = flags[-1].startswith("--no-")
            kwargs["action"] = "store_false" if negated else "store_true"
            if negated:
                kwargs["help"] = "turn off (on by default): " + kwargs["help"]
        elif name in FOUR_INTS:
            kwargs.update(type=_four_ints(FOUR_INTS[name]), metavar="'TOP BOTTOM LEFT RIGHT'")
        elif choices:
            kwargs.update(choices=choices, type=type(choices[0]))
        elif f.annotation == CountOrAuto:
            kwargs.update(type=str, metavar="N|auto")  # the model turns N into a number and checks it
        else:
            kwargs["type"] = _scalar(f.annotation)
        if f.is_required():
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            if f.annotation is not bool and f.default is not None:
                kwargs["help"] += f" (default: {_show(f.default)})"
        parser.add_argument(*flags, **kwargs)


def parse_options(args: argparse.Namespace) -> tuple[JobInputs | None, RunOptions]:
    """Validate the parsed flags with the same rules as the flow; :class:`OptionError` names the flag.

    A command that takes only some of the options gets the defaults of the others, and no
    :class:`JobInputs` unless it takes all of them."""
    values = vars(args)
    try:
        has_inputs = all(k in values for k in JobInputs.model_fields)
        inputs = JobInputs(**{k: values[k] for k in JobInputs.model_fields}) if has_inputs else None
        opts = RunOptions(**{k: values[k] for k in RunOptions.model_fields if k in values})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        flag = cli_flags(name)[-1] if name in PARAMETERS else name
        msg = err["msg"].removeprefix("Value error, ")
        raise OptionError(f"{flag}: {msg} (got {_show(err.get('input'))})") from None
    return inputs, opts


class OptionError(ValueError):
    """An option value outside its type, choices or limits."""


def _choices(annotation: Any) -> list | None:
    return list(get_args(annotation)) if get_origin(annotation) is Literal else None


def _scalar(annotation: Any) -> type:
    for t in (int, float, str):
        if annotation is t or t in get_args(annotation):
            return t
    return str


def _sentence(text: str | None) -> str:
    text = text or ""
    return text[:-1] if text.endswith(".") and not text.endswith("...") else text


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


# ------------------------------------------------------------------------------------ the README
LIMITS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def markdown_table() -> str:
    """The README's option table: CLI flag, flow parameter, default, help."""
    rows = ["| CLI | flow parameter | default | what it does |", "|---|---|---|---|"]
    for name, f in PARAMETERS.items():
        default = "required" if f.is_required() else f"`{_show(f.default)}`"
        choices = _choices(f.annotation)
        extra = f" One of: {', '.join(f'`{c}`' for c in choices)}." if choices else ""
        limits = [f"{sign} {getattr(m, attr)}" for m in _metadata(f) for attr, sign in LIMITS if hasattr(m, attr)]
        extra += f" Limits: {', '.join(limits)}." if limits else ""
        rows.append(f"| `{'`, `'.join(cli_flags(name))}` | `{name}` | {default} | {f.description}{extra} |")
    return "\n".join(rows)


def _metadata(f: FieldInfo) -> list:
    """The field's constraints, and those of a union's annotated member (``CountOrAuto``'s integer)."""
    members = [a.__metadata__ for a in get_args(f.annotation) if get_origin(a) is Annotated]
    return [*f.metadata, *(m for meta in members for m in meta)]


if __name__ == "__main__":
    print(markdown_table())
