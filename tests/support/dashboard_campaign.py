"""A campaign for the dashboard's tests, written through the registry itself.

Two runs of a macro with two micros, in MUSCLE3's folder layout (each run
directory holds ``configuration.ymmsl``, its workflow snapshot folder and
``instances/<instance>/snapshots/`` with a real file per snapshot, of a known
size): run 1 from scratch, run 2 resumed from run 1's newest workflow snapshot,
its resumed instances first registering copies of what they resumed from (as
libmuscle does), then going on. :meth:`DashboardCampaign.register_more` goes on
with run 2 later, the way a live manager would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from snapreg import SnapshotRegistry, WorkflowSnapshot
from snapreg.rules.metadata import SnapshotMetadata, coerce_metadata

from .streams import macro_micro

STREAM = macro_micro(7, num_micro=2, num_steps=8, micro_intermediate=False)
#: Registrations of run 1; then run 2 goes on from here.
RUN_1 = 10
#: Registrations of run 2 written before a test starts.
RUN_2 = 6
CAMPAIGN = "macro_micro"


@dataclass
class DashboardCampaign:
    """The campaign's database and folders, and what was written so far.

    Attributes:
        folder: Holds ``campaign.sqlite``, ``run1/`` and ``run2/``.
        url: The database.
        resumed_from: The workflow snapshot run 2 resumed from.
        next_registration: The stream's next registration for run 2.
        sizes: Bytes of every instance snapshot file written.
    """

    folder: Path
    url: str
    resumed_from: int = 0
    next_registration: int = RUN_1
    sizes: dict[str, int] = field(default_factory=dict)

    def run_dir(self, number: int) -> Path:
        """Run ``number``'s directory."""
        return self.folder / f"run{number}"

    def registry(self, run: int, **options: object) -> SnapshotRegistry:
        """A registry on run ``run``'s snapshot folder."""
        return SnapshotRegistry(
            STREAM.config,
            self.run_dir(run) / "snapshots",
            database_url=self.url,
            campaign=CAMPAIGN,
            **options,  # type: ignore[arg-type]
        )

    def snapshot(
        self, run: int, instance: str, data: SnapshotMetadata
    ) -> SnapshotMetadata:
        """The metadata with its file moved into run ``run``'s folder and written."""
        name = Path(data.snapshot_filename).name
        path = self.run_dir(run) / "instances" / instance / "snapshots" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 1000 + 10 * len(self.sizes)
        path.write_bytes(b"s" * size)
        self.sizes[str(path)] = size
        return dataclasses.replace(data, snapshot_filename=str(path))

    def register_more(
        self, registry: SnapshotRegistry, count: int
    ) -> list[WorkflowSnapshot]:
        """Register run 2's next ``count`` snapshots; the workflow snapshots found."""
        found: list[WorkflowSnapshot] = []
        stop = min(self.next_registration + count, len(STREAM.registrations))
        for index in range(self.next_registration, stop):
            instance, fields = STREAM.registrations[index]
            data = self.snapshot(2, instance, coerce_metadata(fields))
            found.extend(registry.add_snapshot(instance, data))
        self.next_registration = stop
        return found


def make_campaign(folder: Path, url: str | None = None) -> DashboardCampaign:
    """Write the campaign into ``folder``: run 1 ended, run 2 ended, resumed.

    Args:
        folder: Where its run directories go (and its SQLite file).
        url: Its database; default ``campaign.sqlite`` in ``folder``.
    """
    campaign = DashboardCampaign(
        folder, url or f"sqlite:///{folder / 'campaign.sqlite'}"
    )
    for number in (1, 2):
        run_dir = campaign.run_dir(number)
        (run_dir / "snapshots").mkdir(parents=True)
        (run_dir / "configuration.ymmsl").write_text("ymmsl_version: v0.2\n")
    with campaign.registry(1) as registry:
        for instance, fields in STREAM.registrations[:RUN_1]:
            registry.add_snapshot(
                instance, campaign.snapshot(1, instance, coerce_metadata(fields))
            )
        newest = registry.workflow_snapshots()[-1]
    campaign.resumed_from = newest.id
    with campaign.registry(2, new_run=True, resumed_from=newest.id) as registry:
        for node in newest.nodes:
            if not node.is_restart:
                copy = campaign.snapshot(2, str(node.instance), node.snapshot)
                registry.add_snapshot(str(node.instance), copy)
        campaign.register_more(registry, RUN_2)
    return campaign
