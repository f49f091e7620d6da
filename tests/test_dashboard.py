"""`snapreg dashboard` over HTTP: every route, what it shows, and every bad input.

The campaign (tests/support/dashboard_campaign.py) is written through the
registry: run 1, then run 2 resumed from it, with real snapshot files of known
sizes. Starlette's test client drives the app in this process; the browser tests
(test_dashboard_browser.py) drive a real server. An unknown campaign, run or id
is a 404 page and bad input a 400 page, HTML and never a traceback; nothing any
route does changes the database.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from snapreg.dashboard.app import create_app
from snapreg.dashboard.pages import DashboardData
from snapreg.dashboard.server import bind, is_loopback, url_of
from snapreg.storage.schema import MAX_ID
from snapreg.tools.gc import plan_cleanup
from snapreg.tools.reader import DatabaseReader
from support.command_line import invoke
from support.dashboard_campaign import CAMPAIGN, DashboardCampaign, make_campaign

CAMPAIGN_PAGE = f"/campaigns/{CAMPAIGN}"


def every_page(newest: int) -> tuple[str, ...]:
    """Every page and answer of the dashboard, for a campaign whose newest
    workflow snapshot is ``newest``."""
    return (
        "/",
        CAMPAIGN_PAGE,
        f"{CAMPAIGN_PAGE}/runs/1",
        f"{CAMPAIGN_PAGE}/runs/2",
        f"{CAMPAIGN_PAGE}/runs/2/timeline.svg",
        f"{CAMPAIGN_PAGE}/disk?keep=1",
        f"/workflow-snapshots/{newest}/resume.ymmsl?with_config=1",
        "/api/state",
    )


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> DashboardCampaign:
    """The campaign the tests that only read share."""
    return make_campaign(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def client(campaign: DashboardCampaign) -> Iterator[TestClient]:
    with DashboardData(campaign.url) as data:
        yield TestClient(create_app(data), raise_server_exceptions=False)


@pytest.fixture
def own_campaign(tmp_path: Path) -> DashboardCampaign:
    """A campaign of the test's own, to change."""
    return make_campaign(tmp_path)


@pytest.fixture
def own_client(own_campaign: DashboardCampaign) -> Iterator[TestClient]:
    with DashboardData(own_campaign.url) as data:
        yield TestClient(create_app(data), raise_server_exceptions=False)


def newest_id(campaign: DashboardCampaign) -> int:
    with DatabaseReader(campaign.url) as reader:
        newest = reader.latest_workflow_snapshot(CAMPAIGN)
    assert newest is not None
    return newest.id


def text_of(html: str) -> str:
    """The page's text, tags dropped and spaces folded."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def assert_error_page(response: Any, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    body = response.text
    assert f'<h1 class="error">{status} ' in body
    assert "Traceback" not in body and 'File "' not in body


# ------------------------------------------------------------------- pages


def test_the_overview_shows_every_campaign_its_newest_run_and_restart_point(
    campaign: DashboardCampaign, client: TestClient
) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    newest = newest_id(campaign)
    assert f'data-campaign="{CAMPAIGN}"' in response.text
    assert f'class="newest-workflow-snapshot" data-id="{newest}"' in response.text
    words = text_of(response.text)
    assert "run 2 ended" in words
    assert "yes" in words  # its newest workflow snapshot is resumable
    assert 'data-state="' in response.text and 'data-state=""' not in response.text


def test_the_campaign_page_shows_runs_lineage_restart_point_and_newest_run(
    campaign: DashboardCampaign, client: TestClient
) -> None:
    response = client.get(CAMPAIGN_PAGE)

    assert response.status_code == 200
    words = text_of(response.text)
    newest = newest_id(campaign)
    with DatabaseReader(campaign.url) as reader:
        snapshot = reader.workflow_snapshot(newest)
        summary = reader.campaigns()[0]
    assert f"Newest workflow snapshot: #{newest} {snapshot.path.name} (run 2" in words
    assert '<span class="yes">resumable</span>: every member' in response.text
    assert f"#{campaign.resumed_from} (run 1)" in words  # run 2's lineage
    for run in summary.runs:
        assert f"/campaigns/{CAMPAIGN}/runs/{run.number}" in response.text
        assert f"status-{run.status}" in response.text
    assert "Why no newer restart point" in words
    assert f"Campaign {CAMPAIGN}, run 2 of 2." in words  # explain's first line
    assert f'/workflow-snapshots/{newest}/resume.ymmsl"' in response.text
    assert f"/campaigns/{CAMPAIGN}/runs/2/timeline.svg" in response.text
    assert f"/campaigns/{CAMPAIGN}/disk?keep=1" in response.text


def test_a_run_page_lists_its_workflow_snapshots_newest_first_with_downloads(
    campaign: DashboardCampaign, client: TestClient
) -> None:
    response = client.get(f"{CAMPAIGN_PAGE}/runs/1")

    assert response.status_code == 200
    with DatabaseReader(campaign.url) as reader:
        expected = [item.id for item in reader.workflow_snapshots(CAMPAIGN, run=1)]
    rows = [int(found) for found in re.findall(r'<tr data-id="(\d+)"', response.text)]
    assert rows == sorted(expected, reverse=True)
    for snapshot_id in expected:
        assert f"/workflow-snapshots/{snapshot_id}/resume.ymmsl?with_config=1" in (
            response.text
        )
    assert "From scratch" in text_of(response.text)


def test_the_timeline_is_plot_s_svg_with_the_resumed_copies_marked(
    client: TestClient,
) -> None:
    wallclock = client.get(f"{CAMPAIGN_PAGE}/runs/2/timeline.svg")
    simulation = client.get(f"{CAMPAIGN_PAGE}/runs/2/timeline.svg?time=simulation")
    first = client.get(f"{CAMPAIGN_PAGE}/runs/1/timeline.svg")

    for response in (wallclock, simulation, first):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert response.text.startswith("<svg")
    assert 'id="resumed-from-run-1"' in wallclock.text
    assert "simulation time" in simulation.text
    assert "resumed-from-run" not in first.text
    assert wallclock.text == client.get(f"{CAMPAIGN_PAGE}/runs/2/timeline.svg").text


def test_the_disk_part_sums_the_snapshot_files_and_shows_what_gc_would_free(
    campaign: DashboardCampaign, client: TestClient
) -> None:
    response = client.get(f"{CAMPAIGN_PAGE}/disk?keep=2")

    assert response.status_code == 200
    words = text_of(response.text)
    total = sum(campaign.sizes.values())
    assert f"{total / 1024:.1f} KiB in {len(campaign.sizes)} instance snapshot" in (
        words
    )
    plan = plan_cleanup(campaign.url, CAMPAIGN, 2)
    assert plan.bytes > 0
    assert (
        f"snapreg gc --keep 2 would free {plan.bytes / 1024:.1f} KiB in"
        f" {len(plan.deletable)} files" in words
    )


def test_the_disk_figures_are_worked_out_once_per_state_unless_asked_again(
    own_campaign: DashboardCampaign, own_client: TestClient
) -> None:
    campaign, client = own_campaign, own_client

    def computed(query: str) -> str:
        response = client.get(f"{CAMPAIGN_PAGE}/disk?keep=1{query}")
        assert response.status_code == 200
        found = re.search(r'data-time="([^"]+)"', response.text)
        assert found is not None
        return found.group(1)

    first = computed("")
    assert computed("") == first
    again = computed("&again=1")
    assert again != first
    with campaign.registry(2) as registry:
        campaign.register_more(registry, 2)
    assert computed("") not in (first, again)


@pytest.mark.parametrize("with_config", ["0", "1"])
def test_a_resume_file_is_export_s_text_as_a_download(
    campaign: DashboardCampaign, client: TestClient, with_config: str
) -> None:
    newest = newest_id(campaign)
    response = client.get(
        f"/workflow-snapshots/{newest}/resume.ymmsl?with_config={with_config}"
    )

    assert response.status_code == 200
    with DatabaseReader(campaign.url) as reader:
        snapshot = reader.workflow_snapshot(newest)
        expected = reader.resume_text(snapshot, with_config=with_config == "1")
    assert response.text == expected
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename*=UTF-8''")
    assert snapshot.path.stem in disposition


def test_a_newest_workflow_snapshot_that_lost_a_file_names_it_and_the_newest_resumable(
    own_campaign: DashboardCampaign, own_client: TestClient
) -> None:
    campaign, client = own_campaign, own_client
    newest = newest_id(campaign)
    with DatabaseReader(campaign.url) as reader:
        snapshots = reader.workflow_snapshots(CAMPAIGN)
    lost = max(
        (node for node in snapshots[-1].nodes if not node.is_restart),
        key=lambda node: node.num,
    )
    Path(lost.snapshot.snapshot_filename).unlink()
    still = [
        item
        for item in snapshots
        if lost.snapshot.snapshot_filename
        not in {node.snapshot.snapshot_filename for node in item.nodes}
    ]

    response = client.get(CAMPAIGN_PAGE)

    words = text_of(response.text)
    assert f"Newest workflow snapshot: #{newest}" in words
    assert "not resumable" in words
    assert f"{lost.snapshot.snapshot_filename} is missing" in words
    assert f'class="newest-resumable" data-id="{still[-1].id}"' in response.text


def test_a_campaign_that_lost_every_file_says_none_is_resumable(
    own_campaign: DashboardCampaign, own_client: TestClient
) -> None:
    for path in own_campaign.sizes:
        Path(path).unlink()
    with DatabaseReader(own_campaign.url) as reader:
        count = len(reader.workflow_snapshots(CAMPAIGN))

    response = own_client.get(CAMPAIGN_PAGE)

    words = text_of(response.text)
    assert "not resumable" in words
    assert f"None of its {count} workflow snapshots is resumable." in words
    assert 'class="newest-resumable"' not in response.text
    assert f"none of its {count} is" in text_of(own_client.get("/").text)


def test_the_state_changes_with_a_registration_and_pages_show_it(
    own_campaign: DashboardCampaign, own_client: TestClient
) -> None:
    campaign, client = own_campaign, own_client
    before = client.get("/api/state").json()["state"]
    assert client.get("/api/state").json()["state"] == before

    with campaign.registry(2) as registry:
        found = campaign.register_more(registry, 8)
    assert found, "the stream must find a new workflow snapshot"

    after = client.get("/api/state").json()["state"]
    assert after != before
    page = client.get(CAMPAIGN_PAGE)
    assert f'class="newest-workflow-snapshot" data-id="{found[-1].id}"' in page.text
    assert f'data-state="{after}"' in page.text


def test_static_files_are_served_from_the_package(client: TestClient) -> None:
    script = client.get("/static/dashboard.js")
    style = client.get("/static/dashboard.css")

    assert script.status_code == 200 and "/api/state" in script.text
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    page = client.get(CAMPAIGN_PAGE).text
    # nothing is loaded from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_no_route_changes_the_database(
    campaign: DashboardCampaign, client: TestClient
) -> None:
    def dump() -> str:
        connection = sqlite3.connect(
            f"file:{campaign.folder / 'campaign.sqlite'}?mode=ro", uri=True
        )
        try:
            return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()
        finally:
            connection.close()

    before = dump()
    newest = newest_id(campaign)
    for path in every_page(newest):
        assert client.get(path).status_code == 200, path
    assert dump() == before


@pytest.mark.postgres
@pytest.mark.slow  # a campaign written on PostgreSQL: a commit per registration
def test_every_page_reads_postgresql_too(tmp_path: Path, postgres_url: str) -> None:
    campaign = make_campaign(tmp_path, postgres_url)
    newest = newest_id(campaign)
    with DashboardData(campaign.url) as data:
        client = TestClient(create_app(data), raise_server_exceptions=False)
        pages = {path: client.get(path) for path in every_page(newest)}
        missing = client.get("/campaigns/nope")

    assert {path: page.status_code for path, page in pages.items()} == {
        path: 200 for path in pages
    }
    assert f'data-id="{newest}"' in pages[CAMPAIGN_PAGE].text
    assert (
        'id="resumed-from-run-1"' in pages[f"{CAMPAIGN_PAGE}/runs/2/timeline.svg"].text
    )
    assert_error_page(missing, 404)


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "path",
    [
        "/campaigns/nope",
        "/campaigns/nope/runs/1",
        "/campaigns/nope/runs/1/timeline.svg",
        "/campaigns/nope/disk",
        f"{CAMPAIGN_PAGE}/runs/3",
        f"{CAMPAIGN_PAGE}/runs/0",
        f"{CAMPAIGN_PAGE}/runs/99999999999999999999999",
        f"{CAMPAIGN_PAGE}/runs/3/timeline.svg",
        f"{CAMPAIGN_PAGE}/runs/x",
        "/workflow-snapshots/999999/resume.ymmsl",
        "/workflow-snapshots/0/resume.ymmsl",
        f"/workflow-snapshots/{MAX_ID + 1}/resume.ymmsl",
        "/workflow-snapshots/99999999999999999999999999/resume.ymmsl",
        "/workflow-snapshots/-1/resume.ymmsl",
        "/workflow-snapshots/abc/resume.ymmsl",
        "/nothing/here",
        "/static/nothing.js",
        "/static/../pages.py",
        "/campaigns/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_an_unknown_campaign_run_id_or_page_is_a_404_page(
    client: TestClient, path: str
) -> None:
    assert_error_page(client.get(path), 404)


@pytest.mark.parametrize(
    "path",
    [
        f"{CAMPAIGN_PAGE}?keep=0",
        f"{CAMPAIGN_PAGE}?keep=abc",
        f"{CAMPAIGN_PAGE}?keep=-3",
        f"{CAMPAIGN_PAGE}?keep={MAX_ID + 1}",
        f"{CAMPAIGN_PAGE}/disk?keep=",
        f"{CAMPAIGN_PAGE}?time=cpu",
        f"{CAMPAIGN_PAGE}/runs/2?time=",
        f"{CAMPAIGN_PAGE}/runs/2/timeline.svg?time=%00",
        "/workflow-snapshots/1/resume.ymmsl?with_config=maybe",
        f"{CAMPAIGN_PAGE}/disk?keep=1&again=maybe",
    ],
)
def test_bad_input_is_a_400_page(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert_error_page(response, 400)
    assert "must be" in text_of(response.text)


def test_the_error_page_names_what_is_missing(client: TestClient) -> None:
    response = client.get("/campaigns/nope")

    assert "no campaign &#39;nope&#39;" in response.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_it_only_reads(client: TestClient, method: str) -> None:
    for path in ("/", CAMPAIGN_PAGE, "/api/state"):
        assert_error_page(client.request(method, path), 405)


def test_a_page_that_fails_is_a_500_page_without_a_traceback(
    campaign: DashboardCampaign,
) -> None:
    with DashboardData(campaign.url) as data:

        def broken() -> object:
            raise RuntimeError("secret detail")

        data.campaigns = broken  # type: ignore[method-assign]
        client = TestClient(create_app(data), raise_server_exceptions=False)
        response = client.get("/")

    assert_error_page(response, 500)
    assert "secret detail" not in response.text


def test_a_campaign_name_with_a_slash_or_spaces_has_its_pages(
    tmp_path: Path,
) -> None:
    from snapreg import SnapshotRegistry
    from snapreg.rules.metadata import coerce_metadata
    from support.dashboard_campaign import STREAM

    url = f"sqlite:///{tmp_path / 'odd.sqlite'}"
    name = "ensemble 2026/a <b>"
    with SnapshotRegistry(
        STREAM.config, None, database_url=url, campaign=name
    ) as registry:
        for instance, fields in STREAM.registrations[:8]:
            registry.add_snapshot(instance, coerce_metadata(fields))
    with DashboardData(url) as data:
        client = TestClient(create_app(data), raise_server_exceptions=False)
        overview = client.get("/")
        page = client.get("/campaigns/ensemble%202026%2Fa%20%3Cb%3E")
        run = client.get("/campaigns/ensemble%202026%2Fa%20%3Cb%3E/runs/1")

    assert "ensemble 2026/a &lt;b&gt;" in overview.text  # escaped, not markup
    assert 'href="/campaigns/ensemble%202026%2Fa%20%3Cb%3E"' in overview.text
    assert page.status_code == 200 and run.status_code == 200


# ---------------------------------------------------------------- the command


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
    ],
)
def test_which_hosts_stay_on_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_socket_is_bound_first_and_its_url_is_the_one_listened_on() -> None:
    listener = bind("127.0.0.1", 0)
    try:
        url = url_of(listener)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url)
        assert not url.endswith(":0/")
        with pytest.raises(OSError):
            bind("127.0.0.1", listener.getsockname()[1])
    finally:
        listener.close()


def test_the_command_refuses_a_missing_database_and_a_missing_extra_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = invoke(
        capsys,
        "dashboard",
        "--db",
        f"sqlite:///{tmp_path / 'none.sqlite'}",
        "--port",
        "0",
    )
    monkeypatch.setitem(sys.modules, "starlette", None)
    no_extra = invoke(capsys, "dashboard", "--port", "0")

    assert missing.status == 1 and missing.stderr.count("\n") == 1
    assert "no database at" in missing.stderr
    assert no_extra.status == 1 and no_extra.stderr.count("\n") == 1
    assert "pip install 'snapreg[dashboard]'" in no_extra.stderr


def test_a_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(capsys, "dashboard", "--port", "70000").status == 2
    assert invoke(capsys, "dashboard", "--port", "-1").status == 2


@pytest.mark.slow  # starts the command as a process of its own
@pytest.mark.parametrize(("host", "warned"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_the_command_prints_its_url_and_warns_beyond_this_machine(
    campaign: DashboardCampaign, host: str, warned: bool
) -> None:
    import json
    import urllib.request

    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from snapreg.cli.main import main; main()",
            "dashboard",
            "--db",
            campaign.url,
            "--host",
            host,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        match = re.search(r"at (http://\S+/)", line)
        assert match, line + process.stderr.read()
        port = int(match.group(1).rsplit(":", 1)[1].rstrip("/"))
        # whatever it listens on, ask it on this machine's loopback only
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/state", timeout=10
        ) as answer:
            assert json.load(answer)["state"]
        assert "(read-only)" in line and campaign.url in line
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert ("beyond this machine" in stderr) is warned
    assert process.returncode is not None
