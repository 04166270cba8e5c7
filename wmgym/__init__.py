"""wmgym: learned simulators for robot manipulation as real Gymnasium environments.

``import wmgym`` reads every task spec under ``envs/`` and registers ``Sim-<Task>-v0`` (the
robosuite twin) and, where the spec names a checkpoint, ``WM-<Task>-v0`` (the learned twin).
"""

from wmgym.registration import register_all

__version__ = "0.1.0"

register_all()
