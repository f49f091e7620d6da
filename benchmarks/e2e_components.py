"""Light checkpointing MUSCLE3 components for the end-to-end benchmark.

``muscle_manager --start-all`` starts each instance as ``python
e2e_components.py KIND``; KIND picks the function below. The components do no
science: a step is a short sleep (``step_sleep`` wallclock seconds, so that 100
instances fit on two cores) and a counter. They check whether a checkpoint is
due where a real model would, and time every registration: from
its ``save_snapshot`` (or ``save_final_snapshot``) call to its return, which
includes writing the instance's snapshot file and the manager's answer. The
samples go to ``registrations.txt`` in the instance's working directory, one
number of seconds a line, when the instance ends.

Only libmuscle and ymmsl are imported: this file runs in the instances'
processes, outside the benchmark's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from libmuscle import USES_CHECKPOINT_API, Instance, Message
from ymmsl.v0_2 import Operator

#: Where each instance writes its registration times, in its working directory.
SAMPLES_FILE = "registrations.txt"


class _Timed:
    """Times the registrations of one instance."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        self.samples: list[float] = []

    def save(self, message: Message, final: bool = False) -> None:
        """Save a snapshot (a final one with ``final``), timing the call."""
        start = time.perf_counter()
        if final:
            self._instance.save_final_snapshot(message)
        else:
            self._instance.save_snapshot(message)
        self.samples.append(time.perf_counter() - start)

    def write(self) -> None:
        """Write the samples to :data:`SAMPLES_FILE` in the working directory."""
        Path(SAMPLES_FILE).write_text(
            "".join(f"{sample:.9f}\n" for sample in self.samples), encoding="utf-8"
        )


def sampler() -> None:
    """Sends every member of the ensemble its sample, ``rounds`` times.

    Each round is one ``dt`` of simulated time: a message to every member, an
    answer from every member; a snapshot after the round when one is due.
    """
    instance = Instance(
        {Operator.O_I: ["o_i[]"], Operator.S: ["s[]"]}, USES_CHECKPOINT_API
    )
    timed = _Timed(instance)
    while instance.reuse_instance():
        dt = instance.get_setting("dt", "float")
        rounds = instance.get_setting("rounds", "int")
        if instance.resuming():
            done = instance.load_snapshot().data
        if instance.should_init():
            done = 0
        slots = instance.get_port_length("o_i")
        while done < rounds:
            t_next = None if done + 1 == rounds else (done + 1) * dt
            for slot in range(slots):
                instance.send("o_i", Message(done * dt, t_next, slot), slot)
            for slot in range(slots):
                if instance.receive("s", slot).data != slot:
                    raise RuntimeError(f"member {slot} answered for another")
            done += 1
            if instance.should_save_snapshot(done * dt):
                timed.save(Message(done * dt, data=done))
        if instance.should_save_final_snapshot():
            timed.save(Message(rounds * dt, data=done), final=True)
    timed.write()


def _member(intermediate: bool) -> None:
    """A micro model: ``steps`` steps of ``dt / steps`` per message received.

    With ``intermediate``, checks every step whether a checkpoint is due;
    otherwise snapshots only at the end of each use (a final snapshot, as
    MUSCLE3 advises for a micro model).
    """
    instance = Instance(
        {Operator.F_INIT: ["f_i"], Operator.O_F: ["o_f"]}, USES_CHECKPOINT_API
    )
    timed = _Timed(instance)
    while instance.reuse_instance():
        span = instance.get_setting("dt", "float")
        steps = instance.get_setting("steps", "int")
        pause = instance.get_setting("step_sleep", "float")
        if instance.resuming():
            start, sample, step = instance.load_snapshot().data
        if instance.should_init():
            received = instance.receive("f_i")
            start, sample, step = received.timestamp, received.data, 0
        while step < steps:
            time.sleep(pause)
            step += 1
            t_cur = start + span * step / steps
            if intermediate and instance.should_save_snapshot(t_cur):
                timed.save(Message(t_cur, data=[start, sample, step]))
        instance.send("o_f", Message(start + span, data=sample))
        if instance.should_save_final_snapshot():
            timed.save(Message(start + span, data=[start, sample, step]), final=True)
    timed.write()


def member() -> None:
    """Ensemble member used once per round, snapshotting at the end of a use."""
    _member(intermediate=False)


def micro() -> None:
    """Micro model, or ensemble member used once: snapshots between steps too."""
    _member(intermediate=True)


def macro() -> None:
    """Macro model: sends its step to the micro model and expects it back."""
    instance = Instance({Operator.O_I: ["o_i"], Operator.S: ["s"]}, USES_CHECKPOINT_API)
    timed = _Timed(instance)
    while instance.reuse_instance():
        dt = instance.get_setting("dt", "float")
        steps = instance.get_setting("steps", "int")
        pause = instance.get_setting("step_sleep", "float")
        if instance.resuming():
            step = instance.load_snapshot().data
        if instance.should_init():
            step = 0
        while step < steps:
            time.sleep(pause)
            t_next = None if step + 1 == steps else (step + 1) * dt
            instance.send("o_i", Message(step * dt, t_next, step))
            if instance.receive("s").data != step:
                raise RuntimeError(f"step {step} did not come back")
            step += 1
            if instance.should_save_snapshot(step * dt):
                timed.save(Message(step * dt, data=step))
        if instance.should_save_final_snapshot():
            timed.save(Message(steps * dt, data=step), final=True)
    timed.write()


COMPONENTS: dict[str, Callable[[], None]] = {
    component.__name__: component for component in (sampler, member, micro, macro)
}

if __name__ == "__main__":
    COMPONENTS[sys.argv[1]]()
