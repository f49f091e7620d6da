"""`snapreg plot`: a real recorded campaign drawn as PNG, SVG and HTML.

The campaign is a real run of the example with the stock manager, recorded by
`snapreg import` (4 instances in 2 components, 6 workflow snapshots). The SVG is
checked for what it must show: one label per lane, one per component group with
several instances, one cut per workflow snapshot.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from snapreg.tools.importer import import_run_directory
from support import stock_runs
from support.command_line import invoke

pytestmark = pytest.mark.slow  # every test plots a real run of MUSCLE3's manager

INSTANCES = ["macro", "micro[0]", "micro[1]", "micro[2]"]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding one real run of the example."""
    folder = tmp_path_factory.mktemp("plot")
    run_dir = stock_runs.copy_run(
        stock_runs.fresh_run(tmp_path_factory), folder / "run"
    )
    url = f"sqlite:///{folder / 'campaign.sqlite'}"
    result = import_run_directory(run_dir, url)
    assert len(result.workflow_snapshots) == 6
    return url


def ids_starting(root: ElementTree.Element, prefix: str) -> list[str]:
    return sorted(
        element.get("id", "")
        for element in root.iter()
        if element.get("id", "").startswith(prefix)
    )


def test_png_is_written(
    recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "timeline.png"
    outcome = invoke(capsys, "plot", "--db", recorded, "-o", str(output))

    assert outcome.status == 0, outcome.stderr
    assert "4 lanes" in outcome.stdout and "6 workflow snapshots" in outcome.stdout
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


@pytest.mark.parametrize("time_axis", ["wallclock", "simulation"])
def test_svg_has_a_label_per_lane_and_group_and_a_cut_per_workflow_snapshot(
    recorded: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    time_axis: str,
) -> None:
    output = tmp_path / "timeline.svg"
    outcome = invoke(
        capsys, "plot", "--db", recorded, "-o", str(output), "--time", time_axis
    )

    assert outcome.status == 0, outcome.stderr
    root = ElementTree.parse(output).getroot()
    assert root.tag == f"{SVG}svg"
    assert ids_starting(root, "lane-") == [f"lane-{name}" for name in INSTANCES]
    assert ids_starting(root, "component-") == ["component-micro"]
    assert len(ids_starting(root, "workflow-snapshot-")) == 6
    assert ids_starting(root, "consistent-pairs") == ["consistent-pairs"]
    texts = {"".join(element.itertext()) for element in root.iter(f"{SVG}text")}
    assert set(INSTANCES) <= texts
    assert "micro (3)" in texts


def test_html_page_holds_the_svg_and_a_row_per_workflow_snapshot(
    recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "timeline.html"
    outcome = invoke(capsys, "plot", "--db", recorded, "-o", str(output), "--json")

    assert outcome.status == 0, outcome.stderr
    page = output.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 1
    assert page.count("<tr><td>") == 6
    assert 'id="workflow-snapshot-' in page
    # self-contained: nothing loaded from elsewhere
    assert "<link" not in page and "src=" not in page and "<script" not in page


def test_an_unknown_format_and_missing_matplotlib_are_one_line_errors(
    recorded: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unknown = invoke(capsys, "plot", "--db", recorded, "-o", str(tmp_path / "a.pdf"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    missing = invoke(capsys, "plot", "--db", recorded, "-o", str(tmp_path / "a.png"))

    assert unknown.status == 1 and "*.png, *.svg or *.html" in unknown.stderr
    assert missing.status == 1
    assert missing.stderr.count("\n") == 1
    assert "pip install 'snapreg[plot]'" in missing.stderr
    assert not list(tmp_path.iterdir())
