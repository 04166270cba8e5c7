"""The task camera: placing it, rendering rgb + metric depth + robot mask, projecting points."""

from __future__ import annotations

import mujoco
import numpy as np

from wmgym.spec import CameraSpec


def look_at_quat(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) for a camera at ``pos`` looking at ``target``.

    MuJoCo cameras look along their local -z axis with +y up.
    """
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    z = -forward
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.stack([x, y, z], axis=1).flatten())
    return quat


def place_camera(model, cam_id: int, cam: CameraSpec) -> None:
    """Moves camera ``cam_id`` of a MuJoCo model to the pose in ``cam``."""
    model.cam_pos[cam_id] = cam.pos
    model.cam_quat[cam_id] = look_at_quat(cam.pos, cam.target)
    model.cam_fovy[cam_id] = cam.fovy


def robot_geom_ids(model, root_body: str) -> np.ndarray:
    """Ids of every geom on the body subtree under ``root_body`` (arm links and gripper).

    Bodies of other trees (the mount and pedestal, which robosuite attaches beside the arm,
    the table, the cube) are excluded.
    """
    root = model.body(root_body).id
    bodies = {root}
    for b in range(model.nbody):  # parents always precede children in MuJoCo's body order
        if model.body_parentid[b] in bodies and b != 0:
            bodies.add(b)
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies], np.int32)


def metric_depth(model, depth01: np.ndarray) -> np.ndarray:
    """Converts MuJoCo's normalized [0, 1] depth buffer to metres along the optical axis."""
    extent = model.stat.extent
    near, far = model.vis.map.znear * extent, model.vis.map.zfar * extent
    return near / (1.0 - depth01 * (1.0 - near / far))


def project(model, data, cam_id: int, point, resolution: int) -> tuple[int, int]:
    """Pixel (row, col) in the upright image where world ``point`` projects."""
    cam_pos = data.cam_xpos[cam_id]
    cam_rot = data.cam_xmat[cam_id].reshape(3, 3)
    p = cam_rot.T @ (np.asarray(point, float) - cam_pos)  # camera frame: looks along -z
    f = 0.5 * resolution / np.tan(np.deg2rad(model.cam_fovy[cam_id]) / 2)
    col = resolution / 2 + f * p[0] / -p[2]
    row = resolution / 2 - f * p[1] / -p[2]
    return int(np.floor(row)), int(np.floor(col))
