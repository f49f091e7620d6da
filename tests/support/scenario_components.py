"""Small checkpointing components for the snapshot scenarios, run by MUSCLE3.

``muscle_manager --start-all`` starts each instance as ``python
scenario_components.py KIND``; KIND picks the function below. The components do
no real science: they count steps and pass numbers around, and check what they
receive, so that a resume from a wrong snapshot fails the run instead of passing
unnoticed. Everything they compute follows from the settings, so two runs of a
scenario take the same snapshots at the same simulation times.

Only libmuscle and ymmsl are imported: this file runs in the instances'
processes, outside the test session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from libmuscle import (
    KEEPS_NO_STATE_FOR_NEXT_USE,
    USES_CHECKPOINT_API,
    Instance,
    Message,
)
from ymmsl.v0_2 import Operator

# Simulation times are computed as start + steps * dt, never by adding dt up, so
# that a resumed instance reaches exactly the times an uninterrupted one does.

#: What an instance prints on its standard output when it resumes, before the
#: simulation time of the snapshot it loaded.
RESUMED_AT = "resumed at t ="


def _resume(instance: Instance) -> Message:
    """Load the snapshot to resume from, and say so on standard output.

    The line tells a test that this instance resumed rather than started again;
    how many workflow snapshots a run writes cannot, as it follows the order in
    which the registry sees the registrations.
    """
    snapshot = instance.load_snapshot()
    print(RESUMED_AT, repr(snapshot.timestamp), flush=True)
    return snapshot


def _macro(vector: bool) -> None:
    """Sends its step number to the micro model(s) and expects it back."""
    suffix = "[]" if vector else ""
    instance = Instance(
        {Operator.O_I: [f"o_i{suffix}"], Operator.S: [f"s{suffix}"]},
        USES_CHECKPOINT_API,
    )
    while instance.reuse_instance():
        t0 = instance.get_setting("t0", "float")
        dt = instance.get_setting("dt", "float")
        steps = round((instance.get_setting("t_max", "float") - t0) / dt)
        if instance.resuming():
            step = _resume(instance).data
        if instance.should_init():
            step = 0
        while step < steps:
            t_cur = t0 + step * dt
            t_next = None if step + 1 == steps else t0 + (step + 1) * dt
            slots = instance.get_port_length("o_i") if vector else 1
            for slot in range(slots):
                message = Message(t_cur, t_next, step)
                if vector:
                    instance.send("o_i", message, slot)
                else:
                    instance.send("o_i", message)
            for slot in range(slots):
                reply = instance.receive("s", slot) if vector else instance.receive("s")
                if reply.data != step:
                    raise RuntimeError(f"step {step} came back as {reply.data}")
            step += 1
            if instance.should_save_snapshot(t0 + step * dt):
                instance.save_snapshot(Message(t0 + step * dt, data=step))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(t0 + step * dt, data=step))


def macro() -> None:
    """Macro model with scalar ports."""
    _macro(vector=False)


def macro_vector() -> None:
    """Macro model with vector ports, one slot per micro instance."""
    _macro(vector=True)


def micro() -> None:
    """Micro model that integrates for ``t_max`` and snapshots as it goes."""
    instance = Instance(
        {Operator.F_INIT: ["f_i"], Operator.O_F: ["o_f"]}, USES_CHECKPOINT_API
    )
    while instance.reuse_instance():
        dt = instance.get_setting("dt", "float")
        if instance.resuming():
            snapshot = _resume(instance)
            start, value, step, steps = snapshot.data
        if instance.should_init():
            received = instance.receive("f_i")
            start, value, step = received.timestamp, received.data, 0
            steps = round(instance.get_setting("t_max", "float") / dt)
        while step < steps:
            step += 1
            if instance.should_save_snapshot(start + step * dt):
                instance.save_snapshot(
                    Message(start + step * dt, data=[start, value, step, steps])
                )
        instance.send("o_f", Message(start + step * dt, data=value))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(
                Message(start + step * dt, data=[start, value, step, steps])
            )


def stateless_micro() -> None:
    """Micro model that keeps nothing from one use to the next."""
    instance = Instance(
        {Operator.F_INIT: ["f_i"], Operator.O_F: ["o_f"]}, KEEPS_NO_STATE_FOR_NEXT_USE
    )
    while instance.reuse_instance():
        received = instance.receive("f_i")
        steps = round(
            instance.get_setting("t_max", "float") / instance.get_setting("dt", "float")
        )
        t_end = received.timestamp + steps * instance.get_setting("dt", "float")
        instance.send("o_f", Message(t_end, data=received.data))


def transformer() -> None:
    """Passes each message on unchanged: a conduit with a model in it."""
    instance = Instance(
        {Operator.F_INIT: ["f_i"], Operator.O_F: ["o_f"]}, KEEPS_NO_STATE_FOR_NEXT_USE
    )
    while instance.reuse_instance():
        instance.send("o_f", instance.receive("f_i"))


def relay() -> None:
    """One link of a dispatch chain: works, snapshots, hands on a hop count.

    The first link's ``f_i`` is not connected; it starts from the default.
    """
    instance = Instance(
        {Operator.F_INIT: ["f_i"], Operator.O_F: ["o_f"]}, USES_CHECKPOINT_API
    )
    while instance.reuse_instance():
        dt = instance.get_setting("dt", "float")
        if instance.resuming():
            start, hops, step, steps = _resume(instance).data
        if instance.should_init():
            received = instance.receive("f_i", default=Message(0.0, data=0))
            start, hops, step = received.timestamp, received.data, 0
            steps = round(instance.get_setting("t_max", "float") / dt)
        while step < steps:
            step += 1
            if instance.should_save_snapshot(start + step * dt):
                instance.save_snapshot(
                    Message(start + step * dt, data=[start, hops, step, steps])
                )
        instance.send("o_f", Message(start + step * dt, data=hops + 1))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(
                Message(start + step * dt, data=[start, hops, step, steps])
            )


def partner() -> None:
    """One of two models in lockstep, each sending on O_I and receiving on S."""
    instance = Instance({Operator.O_I: ["o_i"], Operator.S: ["s"]}, USES_CHECKPOINT_API)
    while instance.reuse_instance():
        t0 = instance.get_setting("t0", "float")
        dt = instance.get_setting("dt", "float")
        steps = round(instance.get_setting("t_max", "float") / dt)
        if instance.resuming():
            step = _resume(instance).data
        if instance.should_init():
            step = 0
        while step < steps:
            t_next = None if step + 1 == steps else t0 + (step + 1) * dt
            instance.send("o_i", Message(t0 + step * dt, t_next, step))
            received = instance.receive("s")
            if received.data != step:
                raise RuntimeError(f"step {step}: the partner is at {received.data}")
            step += 1
            if instance.should_save_snapshot(t0 + step * dt):
                instance.save_snapshot(Message(t0 + step * dt, data=step))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(t0 + step * dt, data=step))


_CHANNELS = 2


def driver() -> None:
    """Drives the complex coupling: one state out, four answers in per step."""
    instance = Instance(
        {
            Operator.O_I: ["state_out"],
            Operator.S: ["Ai", "Bi", "Ci", "Di"],
            Operator.O_F: ["o_f"],
        },
        USES_CHECKPOINT_API,
    )
    while instance.reuse_instance():
        dt = instance.get_setting("dt", "float")
        steps = instance.get_setting("steps", "int")
        if instance.resuming():
            step = _resume(instance).data
        if instance.should_init():
            step = 0
        while step < steps:
            instance.send("state_out", Message(step * dt, data=step))
            for port in ("Ai", "Bi", "Ci", "Di"):
                instance.receive(port)
            step += 1
            if instance.should_save_snapshot(step * dt):
                instance.save_snapshot(Message(step * dt, data=step))
        instance.send("o_f", Message(step * dt, data=step))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(step * dt, data=step))


def cache() -> None:
    """Answers from a cache, asking its calculator again every ``refresh`` uses.

    Ports that the configuration leaves unconnected are skipped (receives give
    the default), so the three caches of the complex coupling share this code.
    It snapshots only at the end of each use, keeping its cache in the snapshot.
    """
    ports = {
        Operator.F_INIT: [f"in{i + 1}" for i in range(_CHANNELS)],
        Operator.O_I: [f"sub_out{i + 1}" for i in range(_CHANNELS)],
        Operator.S: [f"sub_in{i + 1}" for i in range(_CHANNELS)],
        Operator.O_F: [f"out{i + 1}" for i in range(_CHANNELS)],
    }
    instance = Instance(ports, USES_CHECKPOINT_API)
    nothing = Message(0.0, data=None)
    uses = 0
    cached: list[object] = [None] * _CHANNELS
    while instance.reuse_instance():
        if instance.resuming():
            uses, cached = _resume(instance).data
        if instance.should_init():
            received = [
                instance.receive(port, default=nothing)
                for port in ports[Operator.F_INIT]
            ]
            t_cur = received[0].timestamp
            if uses % instance.get_setting("refresh", "int") == 0:
                for message, port in zip(received, ports[Operator.O_I], strict=True):
                    instance.send(port, Message(t_cur, data=message.data))
                cached = [
                    instance.receive(port, default=nothing).data
                    for port in ports[Operator.S]
                ]
            uses += 1
            for value, port in zip(cached, ports[Operator.O_F], strict=True):
                instance.send(port, Message(t_cur, data=value))
        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(t_cur, data=[uses, cached]))


def echo() -> None:
    """Sends on ``outN`` what came in on ``inN``, for each connected ``inN``.

    Everything is received before anything is sent, as F_INIT comes before O_F.
    """
    ports = {
        Operator.F_INIT: [f"in{i + 1}" for i in range(_CHANNELS)],
        Operator.O_F: [f"out{i + 1}" for i in range(_CHANNELS)],
    }
    instance = Instance(ports, KEEPS_NO_STATE_FOR_NEXT_USE)
    while instance.reuse_instance():
        received = {
            port_out: instance.receive(port_in)
            for port_in, port_out in zip(
                ports[Operator.F_INIT], ports[Operator.O_F], strict=True
            )
            if instance.is_connected(port_in)
        }
        for port_out, message in received.items():
            instance.send(port_out, message)


COMPONENTS: dict[str, Callable[[], None]] = {
    component.__name__: component
    for component in (
        macro,
        macro_vector,
        micro,
        stateless_micro,
        transformer,
        relay,
        partner,
        driver,
        cache,
        echo,
    )
}

if __name__ == "__main__":
    COMPONENTS[sys.argv[1]]()
