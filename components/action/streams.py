"""Generated video streams for online action detection: the shapes of the vision pipeline
(the same masks, palette and 32 px canvas, so the vision encoder reads them) performing
actions, with per-frame labels and instance boundaries.

    stream = render_stream(StreamsConfig(), "train", 0)
    stream.frames      uint8 [T, 32, 32, 3]
    stream.labels      int64 [T]: the index in ACTIONS of what the actor does at each frame
    stream.instances   (Instance(label=3, start=117, end=151), ...): end exclusive

Split s, stream i comes from numpy's Generator seeded [seed, s, i] alone: deterministic, and
no two splits share a stream.

One actor per stream, and `distractors` other objects drifting slowly (never labelled). The
timeline alternates background gaps (the actor still) and action instances:

    move_left/right/up/down  the actor travels 6-12 px along the axis
    grow / shrink            its side grows by 40-80 % / shrinks to 50-70 %
    change_colour            it fades to another palette colour
    blink                    it vanishes and reappears every few frames
    enter / leave            a new actor comes in over an edge / the actor goes out over the
                             nearest one (after a leave, the only next action is an enter)

Every action starts with an ease-in: its first `onset` frames do 2 % of its change in all, so
an action looks like background until it is under way (an ambiguous onset). On every frame:
Gaussian camera noise (`noise`), a brightness flicker, and now and then a dark bar crossing
the canvas (`occlusion`), drawn over everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.action.config import StreamsConfig
from components.vision.data.shapes import COLOUR_RGB, COLOURS, SHAPES, shape_mask

ACTIONS = (
    "background",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "grow",
    "shrink",
    "change_colour",
    "blink",
    "enter",
    "leave",
)
BACKGROUND = 0
SPLITS = ("train", "val", "test")
ONSET_SHARE = 0.02  # of an action's change done in its first `onset` frames
EXTENT = (6.0, 12.0)  # an actor's side when it appears, px
DISTRACTOR_EXTENT = (4.0, 7.0)
DISTRACTOR_SPEED = 0.08  # px per frame, at most, per axis
MARGIN = 1.0  # px kept between an object inside the canvas and its edge
BAR_WIDTH, BAR_SPEED = 5, 2  # the occluding bar


@dataclass(frozen=True)
class Instance:
    label: int  # index in ACTIONS
    start: int  # first frame
    end: int  # one past the last

    @property
    def name(self) -> str:
        return ACTIONS[self.label]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "action": self.name, "start": self.start, "end": self.end}


@dataclass
class Stream:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    labels: np.ndarray  # int64 [T]
    instances: tuple[Instance, ...]
    centres: np.ndarray  # float [T, 2]: the actor's centre (x, y), off-canvas when outside
    extents: np.ndarray  # float [T]: the actor's side
    colours: np.ndarray  # float [T, 3]: the actor's RGB
    shown: np.ndarray  # bool [T]: the actor drawn (not blinked out, not gone)


@dataclass
class _Object:
    shape: str
    rgb: np.ndarray  # float [3]
    extent: float
    x: float
    y: float
    present: bool = True  # on the canvas (False after a leave)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def copy(self) -> _Object:
        return _Object(self.shape, self.rgb.copy(), self.extent, self.x, self.y, self.present)


def _new_object(rng: np.random.Generator, size: int, extents: tuple[float, float]) -> _Object:
    extent = float(rng.uniform(*extents))
    low, high = extent / 2 + MARGIN, size - extent / 2 - MARGIN
    colour = COLOURS[rng.integers(len(COLOURS))]
    return _Object(
        SHAPES[rng.integers(len(SHAPES))],
        np.array(COLOUR_RGB[colour], float),
        extent,
        float(rng.uniform(low, high)),
        float(rng.uniform(low, high)),
    )


def progress(k: int, length: int, onset: int) -> float:
    """Share of an action's change done after its frame k (0..length-1): ONSET_SHARE spread
    over the first `onset` frames, the rest evenly after; 1.0 at the last frame."""
    if k < onset:
        return ONSET_SHARE * (k + 1) / onset
    start = ONSET_SHARE if onset else 0.0
    return start + (1 - start) * (k + 1 - onset) / (length - onset)


def _room(obj: _Object, size: int) -> dict[str, float]:
    """How far the object can travel each way and stay inside (MARGIN kept)."""
    half = obj.extent / 2 + MARGIN
    return {
        "move_left": obj.x - half,
        "move_right": size - obj.x - half,
        "move_up": obj.y - half,
        "move_down": size - obj.y - half,
    }


def _feasible(actor: _Object, size: int) -> list[str]:
    if not actor.present:
        return ["enter"]
    room = _room(actor, size)
    names = [name for name, space in room.items() if space >= 6]
    if actor.extent * 1.4 / 2 + MARGIN <= min(room.values()) + actor.extent / 2:
        names.append("grow")
    if actor.extent * 0.7 >= 4:
        names.append("shrink")
    return [*names, "change_colour", "blink", "leave"]


def _target(rng: np.random.Generator, name: str, actor: _Object, size: int) -> _Object:
    """The actor's state at the end of action `name` (for enter: its start is set too)."""
    end = actor.copy()
    room = _room(actor, size)
    if name.startswith("move_"):
        distance = min(float(rng.uniform(6, 12)), room[name])
        dx, dy = {
            "move_left": (-1, 0),
            "move_right": (1, 0),
            "move_up": (0, -1),
            "move_down": (0, 1),
        }[name]
        end.x, end.y = actor.x + dx * distance, actor.y + dy * distance
    elif name == "grow":
        limit = (min(room.values()) + actor.extent / 2) * 2
        end.extent = min(actor.extent * float(rng.uniform(1.4, 1.8)), limit)
    elif name == "shrink":
        end.extent = actor.extent * float(rng.uniform(0.5, 0.7))
    elif name == "change_colour":
        others = [c for c in COLOURS if not np.array_equal(COLOUR_RGB[c], actor.rgb)]
        end.rgb = np.array(COLOUR_RGB[others[rng.integers(len(others))]], float)
    elif name == "leave":
        gaps = {
            "move_left": actor.x,
            "move_right": size - actor.x,
            "move_up": actor.y,
            "move_down": size - actor.y,
        }
        edge = min(gaps, key=gaps.__getitem__)
        out = actor.extent / 2 + 1
        end.x = {"move_left": -out, "move_right": size + out}.get(edge, actor.x)
        end.y = {"move_up": -out, "move_down": size + out}.get(edge, actor.y)
        end.present = False
    return end


def _entering(rng: np.random.Generator, size: int) -> tuple[_Object, _Object]:
    """A new actor's state just outside an edge, and inside the canvas after its enter."""
    inside = _new_object(rng, size, EXTENT)
    start = inside.copy()
    out, depth = inside.extent / 2 + 1, inside.extent / 2 + MARGIN + float(rng.uniform(0, 6))
    edge = int(rng.integers(4))
    if edge == 0:
        start.x, inside.x = -out, depth
    elif edge == 1:
        start.x, inside.x = size + out, size - depth
    elif edge == 2:
        start.y, inside.y = -out, depth
    else:
        start.y, inside.y = size + out, size - depth
    return start, inside


def _between(a: _Object, b: _Object, q: float) -> _Object:
    mixed = a.copy()
    mixed.x, mixed.y = a.x + (b.x - a.x) * q, a.y + (b.y - a.y) * q
    mixed.extent = a.extent + (b.extent - a.extent) * q
    mixed.rgb = a.rgb + (b.rgb - a.rgb) * q
    return mixed


def _paint(canvas: np.ndarray, obj: _Object) -> None:
    """Draw `obj` on float `canvas` [H, W, 3], clipped to it."""
    side = max(3, round(obj.extent))
    mask = shape_mask(obj.shape, side)
    x0, y0 = round(obj.x - side / 2), round(obj.y - side / 2)
    h, w = canvas.shape[:2]
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(h, y0 + side), min(w, x0 + side)
    if top >= bottom or left >= right:
        return
    local = mask[top - y0 : bottom - y0, left - x0 : right - x0]
    canvas[top:bottom, left:right][local] = obj.rgb


class _Timeline:
    """The actor's state frame by frame, and the labels."""

    def __init__(self, config: StreamsConfig, rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.actor = _new_object(rng, config.size, EXTENT)
        self.states: list[tuple[_Object, bool]] = []  # (state, drawn) per frame
        self.labels: list[int] = []
        self.instances: list[Instance] = []

    def hold(self, frames: int) -> None:
        for _ in range(frames):
            self.states.append((self.actor.copy(), self.actor.present))
            self.labels.append(BACKGROUND)

    def act(self, name: str, length: int) -> None:
        config, rng = self.config, self.rng
        if name == "enter":
            start, end = _entering(rng, config.size)
            self.actor = start
        else:
            start, end = self.actor, _target(rng, name, self.actor, config.size)
        period = int(rng.integers(2, 4))
        label = ACTIONS.index(name)
        first = len(self.labels)
        for k in range(length):
            q = progress(k, length, config.onset)
            state = _between(start, end, q)
            drawn = True
            if name == "blink" and k >= config.onset and k < length - 1:
                drawn = ((k - config.onset) // period) % 2 == 1
            if name == "leave" and k == length - 1:
                state.present = False
            self.states.append((state, drawn and state.present))
            self.labels.append(label)
        self.actor = end if name != "blink" else start
        self.instances.append(Instance(label, first, first + length))


def render_stream(config: StreamsConfig, split: str, index: int) -> Stream:
    """Stream `index` of `split` (module doc)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    size, total = config.size, config.frames
    timeline = _Timeline(config, rng)
    while len(timeline.labels) < total:
        timeline.hold(int(rng.integers(config.min_gap, config.max_gap + 1)))
        left = total - len(timeline.labels)
        if left < config.min_length:
            timeline.hold(left)
            break
        choices = _feasible(timeline.actor, size)
        name = choices[int(rng.integers(len(choices)))]
        length = int(rng.integers(config.min_length, min(config.max_length, left) + 1))
        timeline.act(name, length)
    states = timeline.states[:total]
    labels = np.asarray(timeline.labels[:total], np.int64)
    instances = tuple(i for i in timeline.instances if i.end <= total)

    background = _background(rng, size)
    distractors = [_new_object(rng, size, DISTRACTOR_EXTENT) for _ in range(config.distractors)]
    for d in distractors:
        d.velocity = rng.uniform(-DISTRACTOR_SPEED, DISTRACTOR_SPEED, size=2)
    frames = np.empty((total, size, size, 3), np.uint8)
    bar: float | None = None
    for t, (actor, drawn) in enumerate(states):
        canvas = background.copy()
        for d in distractors:
            _drift(d, size)
            _paint(canvas, d)
        if drawn:
            _paint(canvas, actor)
        if bar is None and rng.random() < config.occlusion:
            bar = -BAR_WIDTH
        if bar is not None:
            left = max(0, int(bar))
            canvas[:, left : max(left, int(bar) + BAR_WIDTH)] = 15.0
            bar = bar + BAR_SPEED if bar + BAR_SPEED < size else None
        canvas += rng.normal(0, config.noise, canvas.shape) + rng.normal(0, 2.0)
        frames[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Stream(
        frames=frames,
        labels=labels,
        instances=instances,
        centres=np.array([(s.x, s.y) for s, _ in states]),
        extents=np.array([s.extent for s, _ in states]),
        colours=np.array([s.rgb for s, _ in states]),
        shown=np.array([drawn for _, drawn in states]),
    )


def _drift(obj: _Object, size: int) -> None:
    """Move a distractor by its velocity, bouncing off the edges."""
    half = obj.extent / 2 + MARGIN
    for axis in (0, 1):
        value = (obj.x, obj.y)[axis] + obj.velocity[axis]
        if not half <= value <= size - half:
            obj.velocity[axis] = -obj.velocity[axis]
            value = min(max(value, half), size - half)
        if axis == 0:
            obj.x = value
        else:
            obj.y = value


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float [size, size, 3]: a dark colour with low-contrast noise (as the shapes images')."""
    base = rng.integers(0, 40, size=3).astype(float)
    texture = rng.integers(0, 12, size=(size, size, 1)).astype(float)
    return base + texture
