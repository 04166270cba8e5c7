"""wmgym: learned simulators for robot manipulation as real Gymnasium environments.

``import wmgym`` reads every task spec (``envs/<task>.toml`` in each data root, see
:mod:`wmgym.paths`) and registers ``Sim-<Task>-v0`` (the robosuite twin) and ``WM-<Task>-v0``
(the learned twin, from the spec's checkpoint directory).
"""

from wmgym.registration import register_all

__version__ = "0.2.0"

register_all()
