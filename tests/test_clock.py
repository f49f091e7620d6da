"""The lease's time comes from an injectable clock: tests advance it, never sleep.

The writer renews its heartbeat when the clock says it is due, and an opener
judges a holder's heartbeat by the clock it was given: on SQLite a holder that
stays silent for longer than the writer timeout is taken over, one that is not is
refused. The tests advance a clock by minutes in no time.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from snapreg import SnapregError, SnapshotRegistry, WriterConflictError
from snapreg.registry.lease import SYSTEM_CLOCK, Heartbeat
from support.entries import register_or_raise
from support.streams import macro_micro
from support.torture import inspection_engine

STREAM = macro_micro(7, num_micro=2, num_steps=4)


class ManualClock:
    """The real clocks, plus however far the test has advanced this one."""

    def __init__(self) -> None:
        self.advanced = 0.0

    def advance(self, seconds: float) -> None:
        self.advanced += seconds

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic() + self.advanced

    def database_now(self, connection: Connection) -> datetime:
        return SYSTEM_CLOCK.database_now(connection) + timedelta(seconds=self.advanced)


def heartbeat_at(url: str) -> datetime | None:
    engine = inspection_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT writer_heartbeat_at FROM run WHERE writer_token IS NOT NULL"
                )
            ).scalar_one_or_none()
    finally:
        engine.dispose()


def test_the_heartbeat_is_due_when_the_clock_says_so() -> None:
    clock = ManualClock()
    heartbeat = Heartbeat(timeout=60.0, clock=clock)
    assert heartbeat.interval == 15.0
    assert not heartbeat.due()
    assert heartbeat.seconds_until_due() == pytest.approx(15.0, abs=1.0)
    clock.advance(14.0)
    assert not heartbeat.due()
    clock.advance(1.0)
    assert heartbeat.due()
    assert heartbeat.seconds_until_due() == 0.0
    heartbeat.renewed()
    assert not heartbeat.due()
    # a short timeout: every quarter of it; a long one: at most every 15 s
    assert Heartbeat(timeout=2.0, clock=clock).interval == 0.5
    assert Heartbeat(timeout=3600.0, clock=clock).interval == 15.0


def test_a_registration_renews_the_lease_once_the_clock_has_advanced(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    folder = tmp_path / "snapshots"
    folder.mkdir()
    clock = ManualClock()
    with SnapshotRegistry(
        STREAM.config, folder, database_url=url, writer_timeout=60.0, clock=clock
    ) as registry:
        register_or_raise(registry, *STREAM.registrations[0])
        opened = heartbeat_at(url)
        assert opened is not None
        register_or_raise(registry, *STREAM.registrations[1])
        assert heartbeat_at(url) == opened  # not due: no renewal
        clock.advance(16.0)
        register_or_raise(registry, *STREAM.registrations[2])
        renewed = heartbeat_at(url)
        assert renewed is not None and renewed > opened
        register_or_raise(registry, *STREAM.registrations[3])
        assert heartbeat_at(url) == renewed


def test_a_silent_holder_is_taken_over_once_the_clock_passes_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    folder = tmp_path / "snapshots"
    folder.mkdir()
    holder = SnapshotRegistry(STREAM.config, folder, database_url=url)
    try:
        for registration in STREAM.registrations[:3]:
            register_or_raise(holder, *registration)
        clock = ManualClock()
        clock.advance(59.0)  # the holder's heartbeat is 59 s old: still there
        with pytest.raises(WriterConflictError, match="60 s after its last heartbeat"):
            SnapshotRegistry(
                STREAM.config, folder, database_url=url, clock=clock
            ).close()
        clock.advance(2.0)  # 61 s: gone
        caplog.set_level(logging.WARNING)
        with SnapshotRegistry(
            STREAM.config, folder, database_url=url, clock=clock
        ) as successor:
            assert successor.run_number == holder.run_number
            register_or_raise(successor, *STREAM.registrations[3])
        assert any("heartbeat too old" in r.getMessage() for r in caplog.records)
        # the holder learns it on its next write, and writes nothing
        with pytest.raises(WriterConflictError, match="taken over"):
            holder.add_snapshot(*STREAM.registrations[4])
    finally:
        with contextlib.suppress(SnapregError):
            holder.close()
