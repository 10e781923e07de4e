"""The arena the simulated Go2 walks in: a walled floor with a few coloured objects the robot can
be asked to reach, and its MuJoCo spec, to which `edgespec.robot.world` attaches the robot. Apart
from the world's robot and stepping, so what the arena holds and how it is built read on their own."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco


@dataclass(frozen=True)
class ArenaObject:
    """A named thing in the arena the robot can be asked to reach."""

    name: str  # how the observation and the task call it, e.g. "red box"
    kind: str  # box | sphere | cone
    xy: tuple[float, float]
    size: float  # half-width (box), radius (sphere, cone base)
    rgba: tuple[float, float, float, float]

    @property
    def geom_name(self) -> str:
        return "arena/" + self.name.replace(" ", "_")


@dataclass(frozen=True)
class Arena:
    half_extent: float = 4.0  # the walls stand at ±half_extent metres
    objects: tuple[ArenaObject, ...] = (
        ArenaObject("red box", "box", (2.6, 1.4), 0.25, (0.85, 0.1, 0.1, 1.0)),
        ArenaObject("blue ball", "sphere", (-1.5, 2.3), 0.18, (0.1, 0.3, 0.9, 1.0)),
        ArenaObject("green cone", "cone", (1.2, -2.4), 0.2, (0.1, 0.75, 0.2, 1.0)),
    )
    start: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, yaw (rad) of the robot

    def find(self, name: str) -> ArenaObject:
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise ValueError(f"no object named {name!r} in the arena; there are: {', '.join(o.name for o in self.objects)}")


def _cone_vertices(radius: float, height: float, sides: int = 24) -> list[float]:
    ring = [
        (radius * math.cos(2 * math.pi * i / sides), radius * math.sin(2 * math.pi * i / sides), 0.0)
        for i in range(sides)
    ]
    return [c for vertex in [*ring, (0.0, 0.0, height)] for c in vertex]


def arena_spec(arena: Arena, timestep: float) -> mujoco.MjSpec:
    """The arena as a MuJoCo spec, the world's physics options set (``timestep``: the world's
    step; the robot's spec is attached to it), then sky, floor, lights, walls and objects."""
    spec = mujoco.MjSpec()
    spec.option.timestep = timestep
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_EULER
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 100.0
    _add_sky_floor_material_and_lights(spec)
    world = spec.worldbody
    extent = arena.half_extent
    world.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[extent + 1, extent + 1, 0.05], material="floor"
    )
    wall_rgba = [0.7, 0.66, 0.6, 1.0]
    for name, pos, size in (
        ("north", [0, extent, 0.3], [extent, 0.05, 0.3]),
        ("south", [0, -extent, 0.3], [extent, 0.05, 0.3]),
        ("east", [extent, 0, 0.3], [0.05, extent, 0.3]),
        ("west", [-extent, 0, 0.3], [0.05, extent, 0.3]),
    ):
        world.add_geom(name=f"wall/{name}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=size, rgba=wall_rgba)
    _add_objects(spec, arena)
    return spec


def _add_sky_floor_material_and_lights(spec: mujoco.MjSpec) -> None:
    """How the arena looks (headlight, skybox, checkered floor material, a sun and a fill light):
    only the rendering depends on it. Apart from `arena_spec` so the geometry reads in one screen."""
    spec.visual.headlight.ambient = [0.25, 0.25, 0.25]
    spec.visual.headlight.diffuse = [0.4, 0.4, 0.4]
    spec.visual.quality.shadowsize = 1024
    spec.add_texture(
        name="skybox",
        type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT,
        rgb1=[0.55, 0.7, 0.9],
        rgb2=[0.1, 0.15, 0.25],
        width=256,
        height=256,
    )
    spec.add_texture(
        name="floor",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        rgb1=[0.42, 0.47, 0.52],
        rgb2=[0.33, 0.37, 0.42],
        width=300,
        height=300,
    )
    floor_material = spec.add_material(name="floor", texrepeat=[8, 8], reflectance=0.05)
    floor_material.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "floor"
    spec.worldbody.add_light(
        name="sun",
        pos=[0, 0, 6],
        dir=[0.3, 0.2, -1],
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        diffuse=[0.7, 0.7, 0.7],
        castshadow=True,
    )
    spec.worldbody.add_light(
        name="fill",
        pos=[-3, -3, 4],
        dir=[0.5, 0.5, -1],
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        diffuse=[0.25, 0.25, 0.25],
        castshadow=False,
    )


def _add_objects(spec: mujoco.MjSpec, arena: Arena) -> None:
    """The arena's objects as geoms on the floor (a cone as a mesh of its own); an unknown kind
    fails here, before the model compiles."""
    world = spec.worldbody
    for obj in arena.objects:
        x, y = obj.xy
        if obj.kind == "box":
            world.add_geom(
                name=obj.geom_name,
                type=mujoco.mjtGeom.mjGEOM_BOX,
                pos=[x, y, obj.size],
                size=[obj.size] * 3,
                rgba=list(obj.rgba),
            )
        elif obj.kind == "sphere":
            world.add_geom(
                name=obj.geom_name,
                type=mujoco.mjtGeom.mjGEOM_SPHERE,
                pos=[x, y, obj.size],
                size=[obj.size, 0, 0],
                rgba=list(obj.rgba),
            )
        elif obj.kind == "cone":
            mesh = obj.geom_name.replace("/", "_")
            spec.add_mesh(name=mesh, uservert=_cone_vertices(obj.size, 3 * obj.size))
            world.add_geom(
                name=obj.geom_name, type=mujoco.mjtGeom.mjGEOM_MESH, meshname=mesh, pos=[x, y, 0], rgba=list(obj.rgba)
            )
        else:
            raise ValueError(f"unknown arena object kind {obj.kind!r}")
