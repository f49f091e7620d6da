"""Deterministic registration streams from simulated MUSCLE3 couplings.

A registry is only interesting when fed what a real run reports: instances that
exchange messages over conduits and save snapshots at points of their own loops,
so that the message counts of peers line up (or almost do). This module builds such
streams by actually simulating the message passing. Every instance is a small
program, a generator of :class:`Send`, :class:`Receive` and :class:`TakeSnapshot`
actions, and :class:`MessagePassingSimulation` interleaves the programs at random
(seeded) while keeping MUSCLE3's counters: a sender counts a message when it sends
it, a receiver when it receives it, per port and per slot.

Each scenario builder takes a :class:`random.Random` (or a seed) and size parameters
and returns a :class:`Stream`: a flattened yMMSL configuration with one root model and
the registrations ``(instance, metadata fields)`` in the order a run would report
them. The metadata fields are exactly those of ``libmuscle.snapshot.SnapshotMetadata``.

Scenarios:

- :func:`macro_micro`: a scalar ``macro`` driving ``micro[N]`` over vector ports
  (optionally replicated as ``macro[M]`` with ``micro[M][N]``).
- :func:`ensemble`: ``driver`` -> load balancer ``lb`` -> ``model[N]`` and back.
- :func:`stateless_scatter`: a ``macro`` -> ``scatter`` -> ``micro[N]`` coupling
  where ``scatter`` keeps no state and only takes implicit snapshots (timestamp NaN).
- :func:`chain`: ``a0`` -> ``a1`` -> ... -> ``a(K-1)``, optionally with feedback.
- :func:`dispatch`: ``c0`` -> ``c1`` -> ... each running once, F_INIT to O_F, as in
  MUSCLE3's own dispatch test; ``c0``'s F_INIT port is connected to nothing.
- :func:`near_miss`: a realistic stream with a few counts moved by one or two.

:func:`as_libmuscle_0_10_reports` turns a stream into what libmuscle 0.10 reports
for the same run: -1 on F_INIT ports that no conduit connects, in final snapshots.

:func:`all_streams` gives a varied set of small streams of all of these.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ymmsl.v0_2 import Component, Conduit, Configuration, Model, Ports

RegistrationFields = dict[str, Any]
"""The fields of one ``SnapshotMetadata``, by name."""

Registration = tuple[str, RegistrationFields]
"""One registration: the instance name (e.g. ``micro[3]``) and its metadata."""

SETTINGS_PORT = "muscle_settings_in"
"""The port MUSCLE3 always reports counts for, whether a conduit uses it or not."""


@dataclass
class Stream:
    """A configuration and the snapshot registrations of one simulated run.

    Attributes:
        name: Unique, descriptive name, e.g. ``macro_micro[n=3]``.
        config: Flattened yMMSL configuration with one root model.
        registrations: ``(instance, metadata fields)`` in registration order.
        scenario: The scenario family, e.g. ``macro_micro`` or ``near_miss``.
        jittered: True when instances skipped some scheduled snapshots, so that
            their checkpoints no longer line up everywhere.
        perturbed_from: For near-miss streams, the name of the realistic stream
            they were derived from; None for realistic streams.
    """

    name: str
    config: Configuration
    registrations: list[Registration]
    scenario: str = ""
    jittered: bool = False
    perturbed_from: str | None = None

    @property
    def realistic(self) -> bool:
        """True iff the stream comes straight from a simulation, unperturbed."""
        return self.perturbed_from is None

    def instances(self) -> list[str]:
        """Return the names of all instances of the model, in model order."""
        names: list[str] = []
        for component in self.config.root_model().components.values():
            names.extend(str(instance) for instance in component.instances())
        return names


# Actions that instance programs yield ---------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send one message on a port (on one slot, for a vector port)."""

    port: str
    slot: int | None = None


@dataclass(frozen=True)
class Receive:
    """Receive one message on a port, blocking until one is available."""

    port: str
    slot: int | None = None


@dataclass(frozen=True)
class TakeSnapshot:
    """Save a snapshot and register it with the manager.

    Attributes:
        timestamp: Simulation time of the saved message; NaN for implicit
            snapshots, which save no message.
        next_timestamp: Next simulation time, None for final snapshots.
        is_final: True for snapshots taken at the end of a reuse iteration.
        triggers: Descriptions of the checkpoint rules that fired.
    """

    timestamp: float
    next_timestamp: float | None
    is_final: bool
    triggers: tuple[str, ...]


Action = Send | Receive | TakeSnapshot
"""What an instance program does next."""


class Checkpoints:
    """Decides at which points of its loop one instance saves a snapshot.

    All instances of a run get the same checkpoint rules (every ``every`` steps), as
    MUSCLE3's simulation-time rules are global. ``skip_probability`` models the
    instances whose triggers fire elsewhere (wallclock rules, differing time grids):
    each due snapshot is then skipped with that probability.
    """

    def __init__(
        self, rng: random.Random, every: int = 1, skip_probability: float = 0.0
    ) -> None:
        """Create the checkpoint rules of one instance.

        Args:
            rng: Source of randomness for skipping, owned by this instance.
            every: A snapshot is due at steps that are multiples of this.
            skip_probability: Chance that a due snapshot is not taken.
        """
        self._rng = rng
        self._every = max(every, 1)
        self._skip_probability = skip_probability

    def due(self, step: int) -> bool:
        """Return True iff a snapshot is to be taken at this step."""
        if step % self._every != 0:
            return False
        return self._rng.random() >= self._skip_probability


def _instance_name(component: str, index: Sequence[int]) -> str:
    """Return the instance name as MUSCLE3 prints it, e.g. ``micro[1][2]``."""
    return component + "".join(f"[{part}]" for part in index)


def _instance_indices(multiplicity: Sequence[int]) -> list[tuple[int, ...]]:
    """Return all indices of a component with this multiplicity, in order."""
    indices: list[tuple[int, ...]] = [()]
    for size in multiplicity:
        indices = [index + (position,) for index in indices for position in range(size)]
    return indices


@dataclass(frozen=True)
class _ConduitEnd:
    """One side of a conduit, seen from the component that owns the port."""

    peer_component: str
    peer_port: str
    is_sender: bool


class MessagePassingSimulation:
    """Interleaves instance programs and keeps MUSCLE3's message counters.

    Messages travel through one FIFO per receiving (instance, port, slot). Senders
    never block; receivers block until a message is there. At every step one
    runnable instance, picked at random, performs its next action, so instances
    progress concurrently but each one's own actions stay in program order.
    """

    def __init__(
        self,
        model: Model,
        rng: random.Random,
        *,
        vector_port_lengths: Mapping[str, int] | None = None,
        settings_messages: int | None = None,
    ) -> None:
        """Prepare a simulation of one run of the model.

        Args:
            model: The root model; its conduits decide where messages go.
            rng: Source of randomness for the interleaving and the wallclock.
            vector_port_lengths: Length of vector ports between components of the
                same dimensionality, keyed ``component.port``. Other vector ports
                take the size of the peer's extra dimension.
            settings_messages: When not None, every instance reports
                ``muscle_settings_in`` with this count (a port no conduit uses),
                unless a conduit does use that port.
        """
        self._model = model
        self._rng = rng
        self._vector_port_lengths = dict(vector_port_lengths or {})
        self._multiplicity: dict[str, list[int]] = {
            str(name): list(component.multiplicity)
            for name, component in model.components.items()
        }
        self._conduit_ends: dict[tuple[str, str], _ConduitEnd] = {}
        for conduit in model.conduits:
            sender = (str(conduit.sending_component()), str(conduit.sending_port()))
            receiver = (
                str(conduit.receiving_component()),
                str(conduit.receiving_port()),
            )
            self._conduit_ends[sender] = _ConduitEnd(*receiver, is_sender=True)
            self._conduit_ends[receiver] = _ConduitEnd(*sender, is_sender=False)

        self._counts: dict[str, dict[str, list[int]]] = {}
        self._instance_location: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, component in model.components.items():
            ports = [str(port) for port in component.ports]
            for port_end in self._conduit_ends:
                if port_end[0] == str(name) and port_end[1] not in ports:
                    ports.append(port_end[1])
            for index in _instance_indices(component.multiplicity):
                instance = _instance_name(str(name), index)
                self._instance_location[instance] = (str(name), index)
                counts = {
                    port: [0] * self._port_length(str(name), port) for port in ports
                }
                if settings_messages is not None and SETTINGS_PORT not in counts:
                    counts[SETTINGS_PORT] = [settings_messages]
                self._counts[instance] = counts

        self._queues: dict[tuple[str, str, int], int] = {}
        self._clock = 0.0
        self._snapshots_taken: dict[str, int] = {}
        self._registrations: list[Registration] = []

    def instances(self) -> list[str]:
        """Return all instance names of the model, in model order."""
        return list(self._counts)

    def _port_length(self, component: str, port: str) -> int:
        """Return the number of slots of a port (1 for a scalar port)."""
        key = f"{component}.{port}"
        if key in self._vector_port_lengths:
            return self._vector_port_lengths[key]
        end = self._conduit_ends.get((component, port))
        if end is None:
            return 1
        own_dims = len(self._multiplicity[component])
        peer_multiplicity = self._multiplicity[end.peer_component]
        if own_dims < len(peer_multiplicity):
            return peer_multiplicity[own_dims]
        return 1

    def _route(
        self, instance: str, port: str, slot: int | None
    ) -> tuple[str, str, int]:
        """Return the (receiver instance, port, slot) a sent message goes to."""
        component, index = self._instance_location[instance]
        end = self._conduit_ends.get((component, port))
        if end is None or not end.is_sender:
            raise ValueError(f"{instance}.{port} is not a connected sending port")
        own_dims = len(index)
        peer_dims = len(self._multiplicity[end.peer_component])
        if own_dims < peer_dims:
            assert slot is not None, f"{instance}.{port} is a vector port"
            return _instance_name(end.peer_component, index + (slot,)), end.peer_port, 0
        if own_dims > peer_dims:
            return (
                _instance_name(end.peer_component, index[:-1]),
                end.peer_port,
                index[-1],
            )
        return _instance_name(end.peer_component, index), end.peer_port, slot or 0

    def _can_execute(self, instance: str, action: Action) -> bool:
        """Return False iff the action is a receive with no message waiting."""
        if isinstance(action, Receive):
            return self._queues.get((instance, action.port, action.slot or 0), 0) > 0
        return True

    def _execute(self, instance: str, action: Action) -> None:
        """Perform one action of an instance, updating queues and counters."""
        counts = self._counts[instance]
        if isinstance(action, Send):
            destination = self._route(instance, action.port, action.slot)
            self._queues[destination] = self._queues.get(destination, 0) + 1
            counts[action.port][action.slot or 0] += 1
        elif isinstance(action, Receive):
            self._queues[(instance, action.port, action.slot or 0)] -= 1
            counts[action.port][action.slot or 0] += 1
        else:
            number = self._snapshots_taken.get(instance, 0) + 1
            self._snapshots_taken[instance] = number
            safe_id = instance.replace("[", "-").replace("]", "")
            fields: RegistrationFields = {
                "triggers": list(action.triggers),
                "wallclock_time": round(self._clock, 3),
                "timestamp": action.timestamp,
                "next_timestamp": action.next_timestamp,
                "port_message_counts": copy.deepcopy(counts),
                "is_final_snapshot": action.is_final,
                "snapshot_filename": (
                    f"/run/instances/{instance}/snapshots/{safe_id}_{number}.pack"
                ),
            }
            self._registrations.append((instance, fields))

    def run(self, programs: Mapping[str, Iterator[Action]]) -> list[Registration]:
        """Run all programs to completion and return the registrations.

        Args:
            programs: One program per instance, keyed by instance name.

        Returns:
            The registrations, in the order the instances reported them.

        Raises:
            RuntimeError: If the programs deadlock.
        """
        unknown = set(programs) - set(self._counts)
        if unknown:
            raise ValueError(f"Programs for unknown instances: {sorted(unknown)}")
        pending: dict[str, Action] = {}
        for instance, program in programs.items():
            first_action = next(program, None)
            if first_action is not None:
                pending[instance] = first_action
        while pending:
            runnable = [
                instance
                for instance, action in pending.items()
                if self._can_execute(instance, action)
            ]
            if not runnable:
                raise RuntimeError(f"Simulated programs deadlocked: {pending}")
            instance = self._rng.choice(runnable)
            self._execute(instance, pending[instance])
            self._clock += self._rng.uniform(0.01, 0.2)
            next_action = next(programs[instance], None)
            if next_action is None:
                del pending[instance]
            else:
                pending[instance] = next_action
        return self._registrations


# Instance programs ------------------------------------------------------------------


def _simulation_trigger(time: float) -> tuple[str, ...]:
    """Return the trigger MUSCLE3 reports for a simulation-time checkpoint."""
    return (f"simulation_time >= {time:g}",)


_AT_END = ("at_end",)


def _time_loop_program(
    num_steps: int,
    num_slots: int,
    checkpoints: Checkpoints | None,
    snapshot_at_start: bool,
    time_step: float = 1.0,
) -> Iterator[Action]:
    """Program of a macro model's time loop.

    Each step it sends its state to and gathers results from ``num_slots`` slots
    (vector ports ``state_out``/``state_in``, or scalar when ``num_slots`` is 0),
    saving an intermediate snapshot after the steps that are due, then a final one.
    """
    time = 0.0
    if checkpoints is not None and snapshot_at_start and checkpoints.due(0):
        yield TakeSnapshot(time, time + time_step, False, _simulation_trigger(time))
    slots: list[int | None] = list(range(num_slots)) if num_slots else [None]
    for step in range(num_steps):
        for slot in slots:
            yield Send("state_out", slot)
        for slot in slots:
            yield Receive("state_in", slot)
        time += time_step
        if (
            checkpoints is not None
            and step + 1 < num_steps
            and checkpoints.due(step + 1)
        ):
            yield TakeSnapshot(time, time + time_step, False, _simulation_trigger(time))
    yield TakeSnapshot(time, None, True, _AT_END)


def _submodel_program(
    num_reuses: int,
    num_substeps: int,
    intermediate: Checkpoints | None,
    intermediates_per_reuse: int,
    final: Checkpoints,
    input_port: str = "init_in",
    output_port: str = "final_out",
    time_step: float = 1.0,
) -> Iterator[Action]:
    """Program of a submodel in a reuse loop.

    Each reuse it receives on F_INIT, integrates ``num_substeps`` substeps (saving
    intermediate snapshots in reuses that are due), sends on O_F and saves a final
    snapshot when due (always after the last reuse).
    """
    for reuse in range(num_reuses):
        yield Receive(input_port)
        start = reuse * time_step
        substep = time_step / num_substeps
        take_intermediates = intermediate is not None and intermediate.due(reuse)
        for sub in range(num_substeps):
            time = start + (sub + 1) * substep
            if take_intermediates and sub < intermediates_per_reuse:
                yield TakeSnapshot(
                    time, time + substep, False, _simulation_trigger(time)
                )
        yield Send(output_port)
        last = reuse == num_reuses - 1
        if last or final.due(reuse + 1):
            end = start + time_step
            triggers = _AT_END if last else _simulation_trigger(end)
            yield TakeSnapshot(end, None, True, triggers)


def _scatter_program(
    num_reuses: int, num_slots: int, implicit: Checkpoints
) -> Iterator[Action]:
    """Program of a stateless mapper that splits one state over its slots.

    It uses no checkpoint API, so MUSCLE3 snapshots it implicitly at the start of
    each reuse after the first (and when the reuse loop ends), without a message:
    timestamp NaN, no next timestamp.
    """
    for reuse in range(num_reuses + 1):
        if reuse > 0 and (reuse == num_reuses or implicit.due(reuse)):
            triggers = _AT_END if reuse == num_reuses else _simulation_trigger(reuse)
            yield TakeSnapshot(math.nan, None, True, triggers)
        if reuse == num_reuses:
            return
        yield Receive("whole_in")
        for slot in range(num_slots):
            yield Send("parts_out", slot)


# Scenario builders ------------------------------------------------------------------


def _as_rng(rng_or_seed: random.Random | int | str) -> random.Random:
    """Return a Random, creating one when given a seed."""
    if isinstance(rng_or_seed, random.Random):
        return rng_or_seed
    return random.Random(rng_or_seed)


def _child_rng(rng: random.Random) -> random.Random:
    """Return an independent Random derived from rng, for one instance."""
    return random.Random(rng.getrandbits(64))


def _configuration(
    name: str, components: list[Component], conduits: list[Conduit]
) -> Configuration:
    """Return a flattened configuration with a single root model."""
    return Configuration(models=[Model(name, components=components, conduits=conduits)])


def macro_micro(
    rng: random.Random | int | str,
    num_micro: int = 3,
    num_steps: int = 4,
    *,
    num_substeps: int = 3,
    micro_intermediate: bool = True,
    intermediates_per_reuse: int = 1,
    macro_intermediate: bool = True,
    snapshot_at_start: bool = False,
    checkpoint_every: int = 1,
    skip_probability: float = 0.0,
    settings_messages: int | None = None,
    macro_replicas: int | None = None,
) -> Stream:
    """A macro model driving ``micro[N]`` through vector ports.

    ``macro`` sends its state on the vector port ``state_out`` (O_I) to every
    ``micro[j].init_in`` (F_INIT) and gathers ``micro[j].final_out`` (O_F) on the
    vector port ``state_in`` (S), ``num_steps`` times. Its port ``final_state_out``
    is declared but not connected.

    Args:
        rng: Random source or seed.
        num_micro: N, the multiplicity of ``micro``.
        num_steps: Macro time steps, and so reuses of each micro.
        num_substeps: Micro substeps per reuse.
        micro_intermediate: Whether micros save intermediate snapshots.
        intermediates_per_reuse: How many intermediate snapshots a micro saves in
            a reuse that is due.
        macro_intermediate: Whether the macro saves snapshots between steps
            (otherwise only its final one).
        snapshot_at_start: Whether the macro also saves one before its first step.
        checkpoint_every: Steps between checkpoints.
        skip_probability: Chance that an instance skips a due snapshot.
        settings_messages: When not None, all instances report
            ``muscle_settings_in`` with this count.
        macro_replicas: When given, ``macro[M]`` drives ``micro[M][N]``.

    Returns:
        The stream of the simulated run.
    """
    rng = _as_rng(rng)
    macro_multiplicity = [macro_replicas] if macro_replicas else []
    micro_multiplicity = macro_multiplicity + [num_micro]
    components = [
        Component(
            "macro",
            Ports(o_i="state_out", s="state_in", o_f="final_state_out"),
            "Macro model with vector ports to the micros",
            multiplicity=macro_multiplicity,
        ),
        Component(
            "micro",
            Ports(f_init="init_in", o_f="final_out"),
            "Micro model, one reuse per macro step",
            multiplicity=micro_multiplicity,
        ),
    ]
    conduits = [
        Conduit("macro.state_out", "micro.init_in"),
        Conduit("micro.final_out", "macro.state_in"),
    ]
    config = _configuration("macro_micro", components, conduits)
    model = config.root_model()

    def checkpoints() -> Checkpoints:
        return Checkpoints(_child_rng(rng), checkpoint_every, skip_probability)

    programs: dict[str, Iterator[Action]] = {}
    for index in _instance_indices(macro_multiplicity):
        programs[_instance_name("macro", index)] = _time_loop_program(
            num_steps,
            num_micro,
            checkpoints() if macro_intermediate else None,
            snapshot_at_start,
        )
    for index in _instance_indices(micro_multiplicity):
        programs[_instance_name("micro", index)] = _submodel_program(
            num_steps,
            num_substeps,
            checkpoints() if micro_intermediate else None,
            intermediates_per_reuse,
            checkpoints(),
        )
    simulation = MessagePassingSimulation(
        model, _child_rng(rng), settings_messages=settings_messages
    )
    replicas = f",replicas={macro_replicas}" if macro_replicas else ""
    options = "".join(
        [
            "" if micro_intermediate else ",no_micro_intermediate",
            f",{intermediates_per_reuse}_per_reuse"
            if intermediates_per_reuse > 1
            else "",
            "" if macro_intermediate else ",no_macro_intermediate",
            ",at_start" if snapshot_at_start else "",
            f",every={checkpoint_every}" if checkpoint_every > 1 else "",
            f",skip={skip_probability:g}" if skip_probability else "",
            ",settings" if settings_messages is not None else "",
        ]
    )
    return Stream(
        name=f"macro_micro[n={num_micro},steps={num_steps}{replicas}{options}]",
        config=config,
        registrations=simulation.run(programs),
        scenario="macro_micro",
        jittered=skip_probability > 0,
    )


def ensemble(
    rng: random.Random | int | str,
    num_models: int = 3,
    num_samples: int = 6,
    num_rounds: int = 2,
    *,
    num_substeps: int = 2,
    model_intermediate: bool = True,
    stateless_balancer: bool = True,
    driver_intermediate: bool = True,
    model_input_port: str = "params_in",
    skip_probability: float = 0.0,
    settings_messages: int | None = None,
) -> Stream:
    """An ensemble: ``driver`` -> load balancer ``lb`` -> ``model[N]`` and back.

    Each round, ``driver`` sends ``num_samples`` parameter sets on its vector port
    ``parameters_out`` (O_I) to the vector port ``lb.front_in`` (F_INIT, same
    length), ``lb`` hands sample ``s`` to ``model[s % N]`` over its vector port
    ``back_out``, gathers the results on ``back_in`` and returns them on
    ``front_out`` to ``driver.results_in`` (S). Models run one sample per reuse.

    Args:
        rng: Random source or seed.
        num_models: N, the multiplicity of ``model``.
        num_samples: Samples per round, at least ``num_models``.
        num_rounds: Rounds of the driver, and so reuses of ``lb``.
        num_substeps: Model substeps per sample.
        model_intermediate: Whether models save intermediate snapshots (only in
            the first sample they run in a round: later ones are not due).
        stateless_balancer: When True, ``lb`` takes implicit snapshots (NaN
            timestamp) between rounds; otherwise explicit final snapshots.
        driver_intermediate: Whether the driver saves snapshots between rounds.
        model_input_port: Name of the models' input port; MUSCLE3's own uq
            example connects ``lb.back_out`` to ``muscle_settings_in``.
        skip_probability: Chance that an instance skips a due snapshot.
        settings_messages: When not None, all instances report
            ``muscle_settings_in`` with this count (if no conduit uses it).

    Returns:
        The stream of the simulated run.
    """
    if num_samples < num_models:
        raise ValueError("Every model instance needs at least one sample")
    rng = _as_rng(rng)
    components = [
        Component(
            "driver",
            Ports(o_i="parameters_out", s="results_in"),
            "Sampler driving the ensemble",
        ),
        Component(
            "lb",
            Ports(f_init="front_in", o_i="back_out", s="back_in", o_f="front_out"),
            "Load balancer",
        ),
        Component(
            "model",
            Ports(f_init=model_input_port, o_f="result_out"),
            "Ensemble member",
            multiplicity=[num_models],
        ),
    ]
    conduits = [
        Conduit("driver.parameters_out", "lb.front_in"),
        Conduit("lb.back_out", f"model.{model_input_port}"),
        Conduit("model.result_out", "lb.back_in"),
        Conduit("lb.front_out", "driver.results_in"),
    ]
    config = _configuration("ensemble", components, conduits)
    model = config.root_model()

    def checkpoints() -> Checkpoints:
        return Checkpoints(_child_rng(rng), 1, skip_probability)

    def driver_program(driver_checkpoints: Checkpoints) -> Iterator[Action]:
        for round_number in range(num_rounds):
            if (
                driver_intermediate
                and round_number > 0
                and driver_checkpoints.due(round_number)
            ):
                yield TakeSnapshot(
                    float(round_number),
                    float(round_number + 1),
                    False,
                    _simulation_trigger(round_number),
                )
            for sample in range(num_samples):
                yield Send("parameters_out", sample)
            for sample in range(num_samples):
                yield Receive("results_in", sample)
        yield TakeSnapshot(float(num_rounds), None, True, _AT_END)

    def balancer_program(balancer_checkpoints: Checkpoints) -> Iterator[Action]:
        for round_number in range(num_rounds + 1):
            if stateless_balancer and round_number > 0:
                last = round_number == num_rounds
                if last or balancer_checkpoints.due(round_number):
                    triggers = _AT_END if last else _simulation_trigger(round_number)
                    yield TakeSnapshot(math.nan, None, True, triggers)
            if round_number == num_rounds:
                return
            for sample in range(num_samples):
                yield Receive("front_in", sample)
            for sample in range(num_samples):
                yield Send("back_out", sample % num_models)
            for sample in range(num_samples):
                yield Receive("back_in", sample % num_models)
            for sample in range(num_samples):
                yield Send("front_out", sample)
            if not stateless_balancer:
                last = round_number == num_rounds - 1
                if last or balancer_checkpoints.due(round_number + 1):
                    time = float(round_number + 1)
                    triggers = _AT_END if last else _simulation_trigger(time)
                    yield TakeSnapshot(time, None, True, triggers)

    def model_program(slot: int, model_checkpoints: Checkpoints) -> Iterator[Action]:
        samples_per_round = len(range(slot, num_samples, num_models))
        for round_number in range(num_rounds):
            # Only the first sample of a round starts at the checkpoint time.
            for sample in range(samples_per_round):
                yield Receive(model_input_port)
                due = model_intermediate and sample == 0
                if due and model_checkpoints.due(round_number):
                    time = round_number + 0.5
                    yield TakeSnapshot(
                        time, time + 0.5, False, _simulation_trigger(time)
                    )
                yield Send("result_out")
                if sample < samples_per_round - 1:
                    # The next sample has the same timestamp: no checkpoint due.
                    continue
                last = round_number == num_rounds - 1
                if last or model_checkpoints.due(round_number + 1):
                    time = float(round_number + 1)
                    triggers = _AT_END if last else _simulation_trigger(time)
                    yield TakeSnapshot(time, None, True, triggers)

    programs: dict[str, Iterator[Action]] = {
        "driver": driver_program(checkpoints()),
        "lb": balancer_program(checkpoints()),
    }
    for slot in range(num_models):
        programs[f"model[{slot}]"] = model_program(slot, checkpoints())
    simulation = MessagePassingSimulation(
        model,
        _child_rng(rng),
        vector_port_lengths={
            "driver.parameters_out": num_samples,
            "driver.results_in": num_samples,
            "lb.front_in": num_samples,
            "lb.front_out": num_samples,
        },
        settings_messages=settings_messages,
    )
    options = "".join(
        [
            "" if model_intermediate else ",no_model_intermediate",
            "" if stateless_balancer else ",stateful_lb",
            "" if driver_intermediate else ",no_driver_intermediate",
            f",input={model_input_port}" if model_input_port != "params_in" else "",
            f",skip={skip_probability:g}" if skip_probability else "",
            ",settings" if settings_messages is not None else "",
        ]
    )
    return Stream(
        name=(
            f"ensemble[n={num_models},samples={num_samples},"
            f"rounds={num_rounds}{options}]"
        ),
        config=config,
        registrations=simulation.run(programs),
        scenario="ensemble",
        jittered=skip_probability > 0,
    )


def stateless_scatter(
    rng: random.Random | int | str,
    num_micro: int = 3,
    num_steps: int = 4,
    *,
    num_substeps: int = 2,
    micro_intermediate: bool = True,
    macro_intermediate: bool = True,
    skip_probability: float = 0.0,
    settings_messages: int | None = 1,
) -> Stream:
    """``macro`` -> stateless ``scatter`` -> ``micro[N]`` -> ``macro``.

    ``macro`` sends its whole state on the scalar port ``state_out`` to
    ``scatter.whole_in``; ``scatter`` splits it over its vector port ``parts_out``
    to ``micro[j].init_in``; results go straight back to the vector port
    ``macro.state_in``. ``scatter`` only ever takes implicit snapshots, whose
    ``timestamp`` is NaN and ``next_timestamp`` None.

    Args:
        rng: Random source or seed.
        num_micro: N, the multiplicity of ``micro``.
        num_steps: Macro time steps.
        num_substeps: Micro substeps per reuse.
        micro_intermediate: Whether micros save intermediate snapshots.
        macro_intermediate: Whether the macro saves snapshots between steps.
        skip_probability: Chance that an instance skips a due snapshot.
        settings_messages: When not None, all instances report
            ``muscle_settings_in`` with this count.

    Returns:
        The stream of the simulated run.
    """
    rng = _as_rng(rng)
    components = [
        Component(
            "macro",
            Ports(o_i="state_out", s="state_in"),
            "Macro model sending one whole state",
        ),
        Component(
            "scatter",
            Ports(f_init="whole_in", o_f="parts_out"),
            "Stateless domain decomposition",
        ),
        Component(
            "micro",
            Ports(f_init="init_in", o_f="final_out"),
            "Micro model on one part",
            multiplicity=[num_micro],
        ),
    ]
    conduits = [
        Conduit("macro.state_out", "scatter.whole_in"),
        Conduit("scatter.parts_out", "micro.init_in"),
        Conduit("micro.final_out", "macro.state_in"),
    ]
    config = _configuration("stateless_scatter", components, conduits)
    model = config.root_model()

    def checkpoints() -> Checkpoints:
        return Checkpoints(_child_rng(rng), 1, skip_probability)

    def macro_program(macro_checkpoints: Checkpoints | None) -> Iterator[Action]:
        time = 0.0
        for step in range(num_steps):
            yield Send("state_out")
            for slot in range(num_micro):
                yield Receive("state_in", slot)
            time += 1.0
            if (
                macro_checkpoints is not None
                and step + 1 < num_steps
                and macro_checkpoints.due(step + 1)
            ):
                yield TakeSnapshot(time, time + 1.0, False, _simulation_trigger(time))
        yield TakeSnapshot(time, None, True, _AT_END)

    programs: dict[str, Iterator[Action]] = {
        "macro": macro_program(checkpoints() if macro_intermediate else None),
        "scatter": _scatter_program(num_steps, num_micro, checkpoints()),
    }
    for slot in range(num_micro):
        programs[f"micro[{slot}]"] = _submodel_program(
            num_steps,
            num_substeps,
            checkpoints() if micro_intermediate else None,
            1,
            checkpoints(),
        )
    simulation = MessagePassingSimulation(
        model, _child_rng(rng), settings_messages=settings_messages
    )
    options = "".join(
        [
            "" if micro_intermediate else ",no_micro_intermediate",
            "" if macro_intermediate else ",no_macro_intermediate",
            f",skip={skip_probability:g}" if skip_probability else "",
        ]
    )
    return Stream(
        name=f"stateless_scatter[n={num_micro},steps={num_steps}{options}]",
        config=config,
        registrations=simulation.run(programs),
        scenario="stateless_scatter",
        jittered=skip_probability > 0,
    )


def chain(
    rng: random.Random | int | str,
    length: int = 3,
    num_steps: int = 4,
    *,
    feedback: bool = False,
    multiplicity: int | None = None,
    checkpoint_every: int = 1,
    skip_probability: float = 0.0,
    settings_messages: int | None = None,
) -> Stream:
    """A pipeline ``a0`` -> ``a1`` -> ... -> ``a(K-1)``, optionally closed.

    Every step ``a0`` sends on ``out``; each next component receives on ``in`` and
    sends on ``out``. With feedback, the last one sends on ``feedback_out`` to
    ``a0.feedback_in`` and ``a0`` waits for it every step (lock step). Each
    component saves its intermediate snapshots either before receiving or right
    after receiving (chosen at random per component), so that strong and weak
    consistency both occur.

    Args:
        rng: Random source or seed.
        length: K, the number of components, at least 2.
        num_steps: Steps of every component.
        feedback: Whether the last component feeds back to the first.
        multiplicity: When given, every component has this multiplicity and the
            pipeline runs element-wise (``a0[m]`` -> ``a1[m]``).
        checkpoint_every: Steps between checkpoints.
        skip_probability: Chance that an instance skips a due snapshot.
        settings_messages: When not None, all instances report
            ``muscle_settings_in`` with this count.

    Returns:
        The stream of the simulated run.
    """
    if length < 2:
        raise ValueError("A chain needs at least two components")
    rng = _as_rng(rng)
    component_multiplicity = [multiplicity] if multiplicity else []
    names = [f"a{position}" for position in range(length)]
    components: list[Component] = []
    for position, name in enumerate(names):
        receive_ports = (
            ["in"] if position > 0 else (["feedback_in"] if feedback else [])
        )
        send_ports = (
            ["out"] if position < length - 1 else (["feedback_out"] if feedback else [])
        )
        components.append(
            Component(
                name,
                Ports(o_i=send_ports, s=receive_ports),
                f"Pipeline stage {position}",
                multiplicity=component_multiplicity,
            )
        )
    conduits = [
        Conduit(f"{sender}.out", f"{receiver}.in")
        for sender, receiver in zip(names, names[1:], strict=False)
    ]
    if feedback:
        conduits.append(Conduit(f"{names[-1]}.feedback_out", f"{names[0]}.feedback_in"))
    config = _configuration("chain", components, conduits)
    model = config.root_model()

    def stage_program(
        position: int, checkpoints: Checkpoints, after_receive: bool
    ) -> Iterator[Action]:
        receive_port = "in" if position > 0 else ("feedback_in" if feedback else None)
        send_port = (
            "out" if position < length - 1 else ("feedback_out" if feedback else None)
        )
        for step in range(num_steps):
            time = float(step)
            snapshot = TakeSnapshot(time, time + 1.0, False, _simulation_trigger(time))
            due = checkpoints.due(step)
            # The first stage sends first, the others receive first.
            if position == 0:
                if due:
                    yield snapshot
                if send_port is not None:
                    yield Send(send_port)
                if receive_port is not None:
                    yield Receive(receive_port)
                continue
            if due and not after_receive:
                yield snapshot
            if receive_port is not None:
                yield Receive(receive_port)
            if due and after_receive:
                yield snapshot
            if send_port is not None:
                yield Send(send_port)
        yield TakeSnapshot(float(num_steps), None, True, _AT_END)

    programs: dict[str, Iterator[Action]] = {}
    for position, name in enumerate(names):
        after_receive = rng.random() < 0.5
        for index in _instance_indices(component_multiplicity):
            programs[_instance_name(name, index)] = stage_program(
                position,
                Checkpoints(_child_rng(rng), checkpoint_every, skip_probability),
                after_receive,
            )
    simulation = MessagePassingSimulation(
        model, _child_rng(rng), settings_messages=settings_messages
    )
    options = "".join(
        [
            ",feedback" if feedback else "",
            f",multiplicity={multiplicity}" if multiplicity else "",
            f",every={checkpoint_every}" if checkpoint_every > 1 else "",
            f",skip={skip_probability:g}" if skip_probability else "",
            ",settings" if settings_messages is not None else "",
        ]
    )
    return Stream(
        name=f"chain[k={length},steps={num_steps}{options}]",
        config=config,
        registrations=simulation.run(programs),
        scenario="chain",
        jittered=skip_probability > 0,
    )


def dispatch(
    rng: random.Random | int | str,
    length: int = 4,
    num_steps: int = 6,
    *,
    checkpoint_every: int = 2,
    skip_probability: float = 0.0,
) -> Stream:
    """A dispatch chain ``c0`` -> ``c1`` -> ...: each one runs once, in turn.

    Every component declares an F_INIT port ``f_i`` and an O_F port ``o_f``;
    ``c(k).o_f`` feeds ``c(k+1).f_i``, so ``c0.f_i`` is connected to nothing (its
    instance receives the default). Each component receives on F_INIT (but
    ``c0``), integrates ``num_steps`` steps with intermediate snapshots where due,
    sends on O_F (but the last) and saves a final snapshot.

    Args:
        rng: Random source or seed.
        length: Number of components, at least 2.
        num_steps: Steps of every component.
        checkpoint_every: Steps between intermediate snapshots.
        skip_probability: Chance that an instance skips a due snapshot.

    Returns:
        The stream of the simulated run (as libmuscle 0.11 reports it).
    """
    if length < 2:
        raise ValueError("A dispatch chain needs at least two components")
    rng = _as_rng(rng)
    names = [f"c{position}" for position in range(length)]
    components = [
        Component(name, Ports(f_init=["f_i"], o_f=["o_f"]), f"Stage {position}")
        for position, name in enumerate(names)
    ]
    conduits = [
        Conduit(f"{sender}.o_f", f"{receiver}.f_i")
        for sender, receiver in zip(names, names[1:], strict=False)
    ]
    config = _configuration("dispatch", components, conduits)

    def program(position: int, checkpoints: Checkpoints) -> Iterator[Action]:
        if position > 0:
            yield Receive("f_i")
        time = float(position * num_steps)
        for step in range(1, num_steps + 1):
            time += 1.0
            if step < num_steps and checkpoints.due(step):
                yield TakeSnapshot(time, time + 1.0, False, _simulation_trigger(time))
        if position < length - 1:
            yield Send("o_f")
        yield TakeSnapshot(time, None, True, _AT_END)

    programs = {
        name: program(
            position, Checkpoints(_child_rng(rng), checkpoint_every, skip_probability)
        )
        for position, name in enumerate(names)
    }
    simulation = MessagePassingSimulation(config.root_model(), _child_rng(rng))
    options = "".join(
        [
            f",every={checkpoint_every}" if checkpoint_every > 1 else "",
            f",skip={skip_probability:g}" if skip_probability else "",
        ]
    )
    return Stream(
        name=f"dispatch[k={length},steps={num_steps}{options}]",
        config=config,
        registrations=simulation.run(programs),
        scenario="dispatch",
        jittered=skip_probability > 0,
    )


def as_libmuscle_0_10_reports(stream: Stream) -> Stream:
    """The same run as libmuscle 0.10 reports it.

    Before an instance decides whether to save a final snapshot, libmuscle 0.10
    pre-receives on its connected F_INIT ports for the next reuse, and then
    reports one message fewer than it counted on every F_INIT port. On a connected
    port that comes to the count the simulation keeps; a port that no conduit
    connects never received, so it reports -1.
    """
    connected = _conduit_ports(stream.config)
    never_received = {
        (str(name), str(port_name))
        for name, component in stream.config.root_model().components.items()
        for port_name in component.ports  # names: ymmsl 0.17's Ports has no items()
        if component.ports[port_name].operator.name == "F_INIT"
        and (str(name), str(port_name)) not in connected
    }
    registrations: list[Registration] = []
    for instance, fields in stream.registrations:
        fields = copy.deepcopy(fields)
        if fields["is_final_snapshot"]:
            component = _component_of(instance)
            for port, counts in fields["port_message_counts"].items():
                if (component, port) in never_received:
                    fields["port_message_counts"][port] = [c - 1 for c in counts]
        registrations.append((instance, fields))
    return Stream(
        name=f"{stream.name}@libmuscle-0.10",
        config=stream.config,
        registrations=registrations,
        scenario=stream.scenario,
        jittered=stream.jittered,
        perturbed_from=stream.perturbed_from,
    )


# Near misses -------------------------------------------------------------------------


def _conduit_ports(config: Configuration) -> set[tuple[str, str]]:
    """Return every (component, port) that some conduit of the model uses."""
    ports: set[tuple[str, str]] = set()
    for conduit in config.root_model().conduits:
        ports.add((str(conduit.sending_component()), str(conduit.sending_port())))
        ports.add((str(conduit.receiving_component()), str(conduit.receiving_port())))
    return ports


def _component_of(instance: str) -> str:
    """Return the component name of an instance name (``micro[3]`` -> ``micro``)."""
    return instance.split("[", 1)[0]


def _count_at(counts: Mapping[str, list[int]], port: str, slot: int) -> int:
    """Return one slot's count, a missing port or slot counting as 0."""
    port_counts = counts.get(port, [])
    return port_counts[slot] if slot < len(port_counts) else 0


def near_miss(
    base: Stream, rng: random.Random | int | str, num_perturbations: int = 2
) -> Stream:
    """Derive a near-miss stream by moving a few counts by one or two.

    Only counts on ports that a conduit uses are moved, never below zero, and every
    instance's counts still never decrease. A perturbation either changes one
    registration's count ("point") or shifts that count in this and all later
    registrations of the instance ("shift", as if one extra or one fewer message had
    been counted). One count list of the result also gets a harmless trailing 0 slot
    (a missing slot counts as 0).

    Args:
        base: A realistic stream.
        rng: Random source or seed.
        num_perturbations: How many counts to move.

    Returns:
        A new stream; ``base`` is left unchanged.
    """
    rng = _as_rng(rng)
    registrations = copy.deepcopy(base.registrations)
    conduit_ports = _conduit_ports(base.config)
    positions_by_instance: dict[str, list[int]] = {}
    for position, (instance, _) in enumerate(registrations):
        positions_by_instance.setdefault(instance, []).append(position)
    candidates = [
        (position, port, slot)
        for position, (instance, fields) in enumerate(registrations)
        for port, counts in fields["port_message_counts"].items()
        if (_component_of(instance), port) in conduit_ports
        for slot in range(len(counts))
    ]
    applied: list[str] = []
    for _ in range(100 * num_perturbations):
        if len(applied) >= num_perturbations or not candidates:
            break
        position, port, slot = rng.choice(candidates)
        instance = registrations[position][0]
        series = positions_by_instance[instance]
        rank = series.index(position)
        delta = rng.choice([-2, -1, 1, 2])
        shift = rng.random() < 0.5
        counts = registrations[position][1]["port_message_counts"]
        new_value = counts[port][slot] + delta
        previous = (
            _count_at(
                registrations[series[rank - 1]][1]["port_message_counts"], port, slot
            )
            if rank > 0
            else 0
        )
        if new_value < previous:
            continue
        if shift:
            for later in series[rank:]:
                later_counts = registrations[later][1]["port_message_counts"]
                if port in later_counts and slot < len(later_counts[port]):
                    later_counts[port][slot] += delta
        else:
            following = (
                _count_at(
                    registrations[series[rank + 1]][1]["port_message_counts"],
                    port,
                    slot,
                )
                if rank + 1 < len(series)
                else math.inf
            )
            if new_value > following:
                continue
            counts[port][slot] = new_value
        kind = "shift" if shift else "point"
        applied.append(f"{kind}:{instance}.{port}[{slot}]{delta:+d}@{position}")

    padded_instance, padded_fields = rng.choice(registrations)
    padded_port = rng.choice(sorted(padded_fields["port_message_counts"]))
    # Pad this instance's port in all its registrations, so the lists keep one length.
    for instance, fields in registrations:
        if instance == padded_instance and padded_port in fields["port_message_counts"]:
            fields["port_message_counts"][padded_port].append(0)

    return Stream(
        name=f"near_miss[{base.name}|{';'.join(applied)}]",
        config=base.config,
        registrations=registrations,
        scenario="near_miss",
        jittered=base.jittered,
        perturbed_from=base.name,
    )


# The standard set --------------------------------------------------------------------


def _scenario_rng(seed: int, label: str) -> random.Random:
    """Return a Random for one stream, independent of the other streams."""
    return random.Random(f"{seed}/{label}")


def realistic_streams(seed: int) -> list[Stream]:
    """Return the realistic (unperturbed) streams of :func:`all_streams`.

    Args:
        seed: Seed for interleavings, jitter and choices.

    Returns:
        Small streams (under ~300 registrations each, at least two instances per
        model) covering every scenario.
    """

    def rng(label: str) -> random.Random:
        return _scenario_rng(seed, label)

    return [
        macro_micro(rng("mm1"), num_micro=1, num_steps=5),
        macro_micro(rng("mm3"), num_micro=3, num_steps=4, settings_messages=1),
        # With intermediates, ten micros give 2**9 choices per macro checkpoint;
        # MUSCLE3 writes every one of them, so this one keeps only final snapshots.
        macro_micro(rng("mm10"), num_micro=10, num_steps=4, micro_intermediate=False),
        macro_micro(
            rng("mm3-final"), num_micro=3, num_steps=4, micro_intermediate=False
        ),
        macro_micro(
            rng("mm3-nomacro"), num_micro=3, num_steps=4, macro_intermediate=False
        ),
        macro_micro(
            rng("mm4-two"),
            num_micro=4,
            num_steps=3,
            intermediates_per_reuse=2,
            snapshot_at_start=True,
            settings_messages=0,
        ),
        macro_micro(rng("mm3-every2"), num_micro=3, num_steps=6, checkpoint_every=2),
        macro_micro(rng("mm5-skip"), num_micro=5, num_steps=5, skip_probability=0.3),
        macro_micro(rng("mm-replicas"), num_micro=3, num_steps=3, macro_replicas=2),
        ensemble(rng("ens3"), num_models=3, num_samples=6, num_rounds=3),
        ensemble(
            rng("ens2-settings"),
            num_models=2,
            num_samples=5,
            num_rounds=2,
            model_input_port=SETTINGS_PORT,
            stateless_balancer=False,
        ),
        ensemble(
            rng("ens4-skip"),
            num_models=4,
            num_samples=8,
            num_rounds=3,
            skip_probability=0.25,
            settings_messages=1,
        ),
        stateless_scatter(rng("scatter3"), num_micro=3, num_steps=4),
        stateless_scatter(
            rng("scatter2-final"), num_micro=2, num_steps=5, micro_intermediate=False
        ),
        chain(rng("chain2"), length=2, num_steps=5),
        chain(rng("chain4-feedback"), length=4, num_steps=5, feedback=True),
        chain(
            rng("chain3-multi"),
            length=3,
            num_steps=4,
            multiplicity=2,
            feedback=True,
            settings_messages=1,
        ),
        chain(rng("chain5-skip"), length=5, num_steps=6, skip_probability=0.3),
    ]


def all_streams(seed: int) -> list[Stream]:
    """Return a varied set of small streams: all realistic ones and near misses.

    Args:
        seed: Seed for interleavings, jitter and perturbations. The same seed
            always gives the same streams.

    Returns:
        The realistic streams of :func:`realistic_streams`, followed by one
        near-miss stream for each of several of them.
    """
    realistic = realistic_streams(seed)
    near_misses = [
        near_miss(base, _scenario_rng(seed, f"near_miss/{base.name}"))
        for base in realistic
        if not base.jittered
    ]
    return realistic + near_misses
