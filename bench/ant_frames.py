"""Frames of AntFriction-v0 at a low and a high friction, saved as PNG pictures.

The same open-loop gait (a fixed 1 Hz sine wave on the eight hip and ankle motors, the same
start) runs at μ = 0.02 and μ = 2.0; a camera that follows the torso takes a frame every
``--every`` steps, and the label says how far the ant got. Writes, under ``--out`` (default ``docs/figures``):

* ``ant_friction_mu0.02.png`` and ``ant_friction_mu2.png``: one strip of frames per friction;
* ``ant_friction_frames.png``: both strips, labelled, one above the other;

and prints where the torso ended up at each friction. Needs offscreen OpenGL: MuJoCo's
``MUJOCO_GL=egl`` (the default here) or ``osmesa`` (Debian: ``apt-get install libosmesa6``).

    MUJOCO_GL=egl python bench/ant_frames.py [--steps 160] [--every 40] [--out docs/figures]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo creates a GL context
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402  (pillow comes with imageio, gymnasium[mujoco])

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import plasticity_gym  # noqa: E402,F401

FRICTIONS = (0.02, 2.0)
# The free camera, looking down at the torso from the side; its look-at point follows the torso.
CAMERA = {"distance": 3.5, "elevation": -25.0, "azimuth": 30.0}


def gait(n_steps: int, dt: float) -> np.ndarray:
    """An open-loop trot: a 1 Hz sine wave of amplitude 0.5, diagonal legs in phase, (n_steps, 8)."""
    t = np.arange(n_steps)[:, None] * dt
    phase = np.array([0, 0, 1, 1, 0, 0, 1, 1]) * np.pi
    return (0.5 * np.sin(2 * np.pi * 1.0 * t + phase)).astype(np.float32)


def frame(env: gym.Env) -> np.ndarray:
    """Render with the camera's look-at point on the torso (the renderer exists after a render)."""
    env.render()
    env.unwrapped.mujoco_renderer.viewer.cam.lookat[:] = env.unwrapped.data.body("torso").xpos
    return env.render()


def frames_at(
    friction: float, n_steps: int, every: int, width: int, height: int
) -> tuple[list[np.ndarray], np.ndarray]:
    env = gym.make("AntFriction-v0", friction=friction, render_mode="rgb_array", width=width, height=height,
                   default_camera_config=CAMERA, reset_noise_scale=0.0, terminate_when_unhealthy=False)
    env.reset(seed=0)
    frames = [frame(env)]
    for i, action in enumerate(gait(n_steps, env.unwrapped.dt), start=1):
        _, _, _, _, info = env.step(action)
        if i % every == 0:
            frames.append(frame(env))
    env.close()
    return frames, np.array([info["x_position"], info["y_position"]])


def label(strip: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (strip.width, strip.height + 22), "white")
    out.paste(strip, (0, 22))
    ImageDraw.Draw(out).text((6, 5), text, fill="black")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=160, help="steps of the gait (0.05 s each)")
    parser.add_argument("--every", type=int, default=40, help="a frame every this many steps")
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "figures"))
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    strips = []
    for friction in FRICTIONS:
        frames, position = frames_at(friction, args.steps, args.every, args.width, args.height)
        strip = Image.fromarray(np.concatenate(frames, axis=1))
        path = os.path.join(args.out, f"ant_friction_mu{friction:g}.png")
        strip.save(path)
        times = ", ".join(f"{k * args.every * 0.05:g}" for k in range(len(frames)))
        print(f"mu={friction:g}: torso at x={position[0]:+.2f} m, y={position[1]:+.2f} m after {args.steps} "
              f"steps; frames at t = {times} s -> {path}")
        distance = float(np.linalg.norm(position))
        strips.append(label(strip, f"friction mu = {friction:g}: {distance:.1f} m from the start after "
                                   f"{args.steps * 0.05:g} s (frames at t = {times} s; same gait, same start)"))
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    y = 0
    for strip in strips:
        sheet.paste(strip, (0, y))
        y += strip.height
    path = os.path.join(args.out, "ant_friction_frames.png")
    sheet.save(path)
    print(f"both -> {path}")


if __name__ == "__main__":
    main()
