"""Options are defined once (core/options.py): the flow's parameters (the UI form), the CLI and the
README's table are derived from that definition and must agree with it."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from core.options import PARAMETERS, RunOptions, cli_flags, markdown_table
from tests.conftest import REPO


def test_readme_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"<!-- options table: generated.*?-->\n(.*?)\n<!-- end of options table -->", readme, re.S)
    assert m, "README.md lost its options table markers"
    assert m.group(1).strip() == markdown_table().strip(), "README's option table is stale: run python -m core.options"


def test_flow_parameters_are_the_definition():
    from flows.lipsync_hq import lipsync_hq

    schema = lipsync_hq.parameters.model_dump()
    props = schema["properties"]
    assert list(props) == list(PARAMETERS)
    assert set(schema["required"]) == {"audio", "video", "output"}
    for name, f in PARAMETERS.items():
        assert props[name]["description"] == f.description, name
        if not f.is_required():
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            assert props[name].get("default") == default, name
    assert props["blend"]["minimum"] == 0.0 and props["blend"]["maximum"] == 1.0
    assert props["upscale"]["enum"] == [1, 2] and props["precision"]["enum"] == ["auto", "fp32", "bf16", "fp16"]
    assert props["crf"]["maximum"] == 51 and props["still_fps"]["exclusiveMinimum"] == 0


def test_flow_validates_with_the_definition(prefect_server, tmp_path):
    from flows.lipsync_hq import lipsync_hq

    with pytest.raises(Exception, match="blend"):
        lipsync_hq(audio="a.wav", video="v.mp4", output=str(tmp_path / "o.mp4"), blend=1.5)
    assert list(tmp_path.iterdir()) == []


def test_cli_flags_and_defaults_are_the_definition():
    from flows.cli import build_parser

    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    by_dest = {a.dest: a for a in run._actions if a.dest != "help"}
    assert set(by_dest) == set(PARAMETERS)
    for name, f in PARAMETERS.items():
        action = by_dest[name]
        assert action.option_strings == cli_flags(name), name
        if not f.is_required():
            assert action.default == f.default, name
    args = run.parse_args(["--audio", "a", "--video", "v", "-o", "o"])
    assert RunOptions(**{k: getattr(args, k) for k in RunOptions.model_fields}) == RunOptions()


@pytest.mark.parametrize("flag, value, message", [
    ("--blend", "1.5", "less than or equal to 1"),
    ("--crf", "99", "less than or equal to 51"),
    ("--fps", "0", "greater than 0"),
    ("--chunk-frames", "0", "greater than or equal to 1"),
    ("--dask-workers", "-1", "greater than or equal to 0"),
])
def test_cli_rejects_values_out_of_range_before_anything_starts(tmp_path, flag, value, message):
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--audio", "missing.wav", "--video", "missing.mp4",
                        "-o", str(out), flag, value], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {flag}: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
