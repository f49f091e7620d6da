"""Micro model: exponential reaction du/dt = k u on a chunk of a 1D grid.

Runs for t_max (much shorter than a macro step) each time it receives a state
on ``initial_state``, and sends the result on ``final_state``. Used with
multiplicity > 1, one instance per chunk. Supports MUSCLE3 checkpointing.
"""
import logging

from libmuscle import USES_CHECKPOINT_API, Grid, Instance, Message
from ymmsl import Operator

_logger = logging.getLogger(__name__)


def reaction() -> None:
    instance = Instance({
            Operator.F_INIT: ['initial_state'],
            Operator.O_F: ['final_state']},
            USES_CHECKPOINT_API)

    while instance.reuse_instance():
        t_max = instance.get_setting('t_max', 'float')
        dt = instance.get_setting('dt', 'float')
        k = instance.get_setting('k', 'float')
        n_steps = int(round(t_max / dt))

        if instance.resuming():
            msg = instance.load_snapshot()
            # A final snapshot has no data: then should_init() is True below
            # and we simply receive the next state from the macro model.
            if msg.data is not None:
                u = msg.data['u'].array.copy()
                t_start = msg.data['t_start']
                step = msg.data['step']
                _logger.info(
                        f'Resumed from intermediate snapshot at t={msg.timestamp}')
            else:
                _logger.info(f'Resumed from final snapshot at t={msg.timestamp}')

        if instance.should_init():
            msg = instance.receive('initial_state')
            u = msg.data.array.copy()
            t_start = msg.timestamp
            step = 0

        while step < n_steps:
            u += k * u * dt
            step += 1

            t_cur = t_start + step * dt
            if instance.should_save_snapshot(t_cur):
                instance.save_snapshot(Message(t_cur, data={
                        'u': Grid(u, ['x']), 't_start': t_start, 'step': step}))

        t_end = t_start + step * dt
        instance.send('final_state', Message(t_end, data=Grid(u, ['x'])))

        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(t_end))


if __name__ == '__main__':
    logging.basicConfig()
    logging.getLogger().setLevel(logging.INFO)
    reaction()
