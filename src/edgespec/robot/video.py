"""The episode as a video: chase-camera frames while the robot moves, and the last frame held
while it waits for a decision, with the decision latency drawn on every frame."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgespec.robot.policy import CONTROL_DT
from edgespec.robot.world import ChaseCamera, Go2World

logger = logging.getLogger(__name__)


class VideoRecorder:
    """Writes ``path`` (.mp4 through imageio-ffmpeg, or .gif) frame by frame, so an episode of
    any length needs one frame of memory. Close it to finish the file."""

    def __init__(
        self,
        world: Go2World,
        path: Path,
        fps: int = 10,
        width: int = 512,
        height: int = 384,
        title: str = "",
        max_hold_s: float | None = 5.0,
    ) -> None:
        import imageio.v2 as imageio
        from PIL import ImageFont

        self.world = world
        self.path = Path(path)
        self.fps = fps
        self.title = title
        # A wait longer than this is shortened in the video (the banner still says how long it
        # was): on a CPU a decision can take tens of seconds of an unchanging frame.
        self.max_hold_s = max_hold_s
        self.camera = ChaseCamera(world, width=width, height=height)
        self._ticks_per_frame = max(1, round(1.0 / (fps * CONTROL_DT)))
        self._tick = 0
        self._step = 0
        self._status = "starting"
        self._last: NDArray[np.uint8] | None = None
        self.frames = 0
        options: dict[str, Any] = {"fps": fps}
        if self.path.suffix.lower() == ".mp4":
            options.update(codec="libx264", quality=7, macro_block_size=16, pixelformat="yuv420p")
        else:
            options = {"duration": 1000 / fps, "loop": 0}
        self._writer = imageio.get_writer(str(self.path), **options)
        try:
            self._font = ImageFont.load_default(size=15)
        except TypeError:  # Pillow without FreeType: the fixed bitmap font
            self._font = ImageFont.load_default()

    def _annotate(self, frame: NDArray[np.uint8], banner: str) -> NDArray[np.uint8]:
        from PIL import Image, ImageDraw

        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, image.width, 42], fill=(0, 0, 0))
        draw.text((8, 4), self.title, fill=(255, 255, 255), font=self._font)
        draw.text((8, 22), banner, fill=(255, 220, 90), font=self._font)
        return np.asarray(image)

    def _banner(self) -> str:
        return f"step {self._step}  t={self.world.time:5.1f} s  {self._status}"

    def _emit(self, frame: NDArray[np.uint8]) -> None:
        self._writer.append_data(frame)
        self.frames += 1

    def on_tick(self) -> None:
        """Called after every policy tick; renders one frame every 1/fps s of simulated time."""
        self._tick += 1
        if self._tick % self._ticks_per_frame:
            return
        self._last = self.camera.frame()
        self._emit(self._annotate(self._last, self._banner()))

    def deciding(self, step: int, seconds: float, label: str) -> None:
        """The robot stands while the model decides: hold the frame for that long (at least one
        frame), with the latency written on it."""
        self._step = step
        if self._last is None:
            self._last = self.camera.frame()
        shown = seconds if self.max_hold_s is None else min(seconds, self.max_hold_s)
        held = max(1, round(shown * self.fps))
        banner = f"step {step}  waiting for the model... {label}" + (" (wait shortened)" if shown < seconds else "")
        frame = self._annotate(self._last, banner)
        for _ in range(held):
            self._emit(frame)
        self._status = label

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self.camera.close()

    def __enter__(self) -> "VideoRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
