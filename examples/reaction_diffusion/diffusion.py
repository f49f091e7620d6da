"""Macro model: 1D diffusion, coupled to a vector of reaction (micro) instances.

Each macro step sends one chunk of the grid to every micro instance on the
vector port ``state_out``, receives the reacted chunks on ``state_in``, then
does one explicit diffusion step. Supports MUSCLE3 checkpointing.
"""
import logging
import time
from pathlib import Path

import numpy as np

from libmuscle import USES_CHECKPOINT_API, Grid, Instance, Message
from ymmsl import Operator

_logger = logging.getLogger(__name__)


def laplacian(u: np.ndarray, dx: float) -> np.ndarray:
    """Second derivative of u in the interior points."""
    return (u[:-2] + u[2:] - 2.0 * u[1:-1]) / dx**2


def diffusion() -> None:
    instance = Instance({
            Operator.O_I: ['state_out[]'],
            Operator.S: ['state_in[]']},
            USES_CHECKPOINT_API)

    while instance.reuse_instance():
        t_max = instance.get_setting('t_max', 'float')
        dt = instance.get_setting('dt', 'float')
        x_max = instance.get_setting('x_max', 'float')
        dx = instance.get_setting('dx', 'float')
        d = instance.get_setting('d', 'float')
        step_sleep = instance.get_setting('step_sleep', 'float', default=0.0)

        n_steps = int(round(t_max / dt))
        n_micro = instance.get_port_length('state_out')

        if instance.resuming():
            msg = instance.load_snapshot()
            step = msg.data['step']
            u = msg.data['u'].array.copy()
            _logger.info(f'Resumed from snapshot at t={msg.timestamp}, step {step}')

        if instance.should_init():
            n_x = int(round(x_max / dx))
            u = np.full(n_x, 1e-20)
            u[[n_x // 4, n_x // 2, 3 * n_x // 4]] = 2.0
            step = 0
            _logger.info('Starting from the initial state')

        while step < n_steps:
            t_cur = step * dt
            t_next = (step + 1) * dt if step + 1 < n_steps else None

            # O_I: one chunk of the grid for each micro instance
            for slot, chunk in enumerate(np.array_split(u, n_micro)):
                msg = Message(t_cur, t_next, Grid(chunk, ['x']))
                instance.send('state_out', msg, slot)

            # S: collect the reacted chunks, then diffuse
            u = np.concatenate([
                    instance.receive('state_in', slot).data.array
                    for slot in range(n_micro)])

            du = np.zeros_like(u)
            du[1:-1] = d * laplacian(u, dx) * dt
            du[0] = du[1]
            du[-1] = du[-2]
            u += du
            step += 1

            if step_sleep > 0.0:
                time.sleep(step_sleep)

            if instance.should_save_snapshot(step * dt):
                instance.save_snapshot(Message(
                        step * dt, data={'step': step, 'u': Grid(u, ['x'])}))

        _logger.info(f'Finished at step {step}, total mass {u.sum():.12g}')
        np.savetxt(Path.cwd() / 'final_state.txt', u)

        if instance.should_save_final_snapshot():
            instance.save_final_snapshot(Message(
                    step * dt, data={'step': step, 'u': Grid(u, ['x'])}))


if __name__ == '__main__':
    logging.basicConfig()
    logging.getLogger().setLevel(logging.INFO)
    diffusion()
