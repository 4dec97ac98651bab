"""Generate the embedded demo dataset: RGBA cut-outs of elongated machined parts, some with burrs.

Why synthetic: the pipeline needs a small, redistributable, byte-reproducible dataset that exercises the
awkward parts of real uploads (transparent pixels that hold non-black colour, messy and colliding file
names, mixed sizes and orientations) while carrying a cue that is learnable but, as on real photos, not
trivially so (the default recipe misses a few burrs and raises a few false alarms):
- a burr is a small protrusion out of the silhouette, 1-3% of the part's length (15% of burred parts 1-1.4%,
  the rest 2.2-3%; >= 2 px once padded and resized to 224), 1 to 3 of them per burred part (30/45/25%):
  slivers, ragged flaps, rows of teeth, rolled-over hooks and rolled edges; mostly bright bare metal, on 20%
  of burred parts dull and in the part's own tint;
- burr look-alikes sit on the edge of 35% of good parts (and 15% of burred ones), one each: chips (35%)
  bitten out of the outline, 1-2.5% of the length deep; casting flash (20%), a fin 0.5-1% high along 6-16%
  of the length with one spike up to twice that; specks of dust or lint (25%), 0.4-1% across; scratches
  (20%) that run up to 2.5 px off the edge;
- holes, chamfers, notches, grooves, threads, steps, glints and stains appear in both classes, inside the outline.

Usage: python scripts/make_demo_data.py [--out data/demo] [--count 120] [--seed 2024]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 4  # silhouettes are drawn at 4x and box-filtered: a 1 px anti-aliased alpha edge
MIN_SIDE, MAX_SIDE = 80, 600
BURR_SHARE = 0.45
BARE_STEEL = np.array([0.86, 0.87, 0.89])  # tint of freshly torn metal (burrs, chips), whatever the part's surface
DUST = np.array([0.92, 0.88, 0.78])  # light grey-beige dust
LINT = np.array([0.85, 0.85, 0.88])  # dark lint and grit (at a low grey level)
ROOT = 2.0  # px a mark reaches into the body (or a bite beyond it), so the two join without a seam
# How far a burr sticks out, as a share of the part's length: TINY_BURR_SHARE of burrs are tiny, the rest small.
TINY_BURR_SHARE_OF_LENGTH = (0.01, 0.014)
BURR_SHARE_OF_LENGTH = (0.022, 0.03)
TINY_BURR_SHARE = 0.15
BURR_MIN_224 = 2.0  # ...but at least this many px in the padded 224 x 224 model input
BURR_COUNT_SHARES = (0.3, 0.45, 0.25)  # shares of burred parts with 1, 2 and 3 burrs
SUBTLE_BURR_SHARE = 0.2  # dull burrs in the part's own tint (often darker than it) instead of bright bare metal
# Burr look-alikes on the edge, as shares of the part's length.
CHIP_SHARE_OF_LENGTH = (0.01, 0.025)  # depth of a chip bitten out of the edge
FLASH_SHARE_OF_LENGTH = (0.005, 0.01)  # height of a casting-flash fin...
FLASH_SPAN_SHARE_OF_LENGTH = (0.06, 0.16)  # ...and its length along the edge
DUST_SHARE_OF_LENGTH = (0.004, 0.01)  # size of a speck of dust
SCRATCH_OVERSHOOT = (0.8, 2.5)  # px a scratch's lip reaches past the edge
MARK_SPACING = 0.08  # least distance between two marks' spots, as a share of the part's length
# Share of parts that carry a look-alike, keyed by "is burred".
DISTRACTED_SHARE = {False: 0.35, True: 0.15}
DEFAULT_COUNT = 120

# Deliberately awkward names first (so even a small --count has them); the first pairs collide once
# lowercased with non-alphanumerics turned into "_". Labels are assigned independently of names.
SPECIAL_NAMES: tuple[str, ...] = (
    "Part 1.png",
    "part_1.PNG",
    "IMG_3 (2).PNG",
    "IMG_3_(2).png",
    "零件 7.png",
    "零件_7.png",
    "shaft-A (copy).Png",
    "Shaft_A (copy).png",
    "part.1.png",
    "DSC00012.png",
    "Bracket  B.png",
    "轴_burr test.PNG",
    "Welle Ø20 (neu).png",
    "Écrou-série 2.png",
    "burr check 4.png",
)

# A part-to-be-rendered: (u, v) is its own frame, u along the long axis (0..length), v across (0 = axis).
Section = tuple[float, float, float, str]  # (u0, u1, half-width, "plain" | "thread" | "groove")


@dataclass
class Part:
    """Geometry of one part in its own frame, plus what the shading needs to know about it."""

    kind: str
    length: float
    prof_u: np.ndarray  # outline half-width profile: v = +-prof_r at u = prof_u
    prof_r: np.ndarray
    flat: bool
    chamfers: tuple[float, float]
    holes: list[tuple[float, float, float, bool]] = field(default_factory=list)  # (u, v, radius, through)
    cuts: list[np.ndarray] = field(default_factory=list)  # polygons removed from one edge (notches)
    slots: list[np.ndarray] = field(default_factory=list)  # polygons removed from the interior
    keep_out: list[tuple[float, float]] = field(default_factory=list)  # u ranges where no burr may sit
    steps: list[float] = field(default_factory=list)
    grooves: list[tuple[float, float]] = field(default_factory=list)
    thread: tuple[float, float, float] | None = None  # (u0, u1, pitch)
    head: float = 0.0  # hex head length from u = 0 (bolts)


# ---------------------------------------------------------------- geometry


def _end_points(r: float, style: str, size: float) -> list[tuple[float, float]]:
    """Profile points of the u = 0 end, from the end face up to full half-width r."""
    if style == "chamfer":
        return [(0.0, r - size), (size, r)]
    if style == "round":
        rad = min(size, r)
        phi = np.linspace(0.0, math.pi / 2, 10)
        return [(rad - rad * math.cos(p), r - rad + rad * math.sin(p)) for p in phi]
    return [(0.0, r)]


def _profile(
    sections: list[Section], ends: tuple[str, str], sizes: tuple[float, float], length: float
) -> tuple[np.ndarray, np.ndarray]:
    """Turn sections (with steps, threads) and end styles into a u-sorted half-width profile."""
    pts = _end_points(sections[0][2], ends[0], sizes[0])
    for i, (u0, u1, r, style) in enumerate(sections):
        if i > 0:
            pts += [(u0, sections[i - 1][2]), (u0 + 0.01, r)]
        if style == "thread":
            pitch = max(3.0, r * 0.15)
            lo = u0 + (sizes[0] if i == 0 else 0.0) + pitch
            hi = u1 - (sizes[1] if i == len(sections) - 1 else 0.0) - pitch
            pts += [(u, r - 1.2 * (k % 2)) for k, u in enumerate(np.arange(lo, hi, pitch / 2))]
    pts += [(length - u, r) for u, r in reversed(_end_points(sections[-1][2], ends[1], sizes[1]))]
    pts.sort(key=lambda p: p[0])
    arr = np.asarray(pts, dtype=np.float64)
    return arr[:, 0], arr[:, 1]


def _circle(u: float, v: float, rad: float) -> np.ndarray:
    """A circle as a polygon in part coordinates."""
    phi = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    return np.stack([u + rad * np.cos(phi), v + rad * np.sin(phi)], axis=1)


def _stadium(u0: float, u1: float, rad: float) -> np.ndarray:
    """A slot (two half circles joined) along the axis, as a polygon."""
    phi = np.linspace(-math.pi / 2, math.pi / 2, 16)
    right = np.stack([u1 + rad * np.cos(phi), rad * np.sin(phi)], axis=1)
    left = np.stack([u0 - rad * np.cos(phi), -rad * np.sin(phi)], axis=1)
    return np.concatenate([right, left])


def _add_groove(sections: list[Section], u: float, width: float, depth: float) -> list[Section]:
    """Split the plain section that fully contains [u - width/2, u + width/2] into a groove."""
    out: list[Section] = []
    for u0, u1, r, style in sections:
        if style == "plain" and u0 + width < u - width / 2 and u + width / 2 < u1 - width:
            out += [(u0, u - width / 2, r, style), (u - width / 2, u + width / 2, r - depth, "groove")]
            out.append((u + width / 2, u1, r, style))
        else:
            out.append((u0, u1, r, style))
    return out


def _end_styles(rng: np.random.Generator, r: float, p_round: float) -> tuple[tuple[str, str], tuple[float, float]]:
    """Random end styles (square, chamfer, round) and their sizes in px."""
    styles = tuple(rng.choice(["square", "chamfer", "round"], p=[0.3, 0.7 - p_round, p_round]) for _ in "ab")
    sizes = tuple(
        r * (rng.uniform(0.5, 1.0) if s == "round" else rng.uniform(0.12, 0.3)) if s != "square" else 0.0
        for s in styles
    )
    return (str(styles[0]), str(styles[1])), (float(sizes[0]), float(sizes[1]))


def _finish(
    rng: np.random.Generator, kind: str, length: float, sections: list[Section], *, flat: bool, p_round: float
) -> Part:
    """Build the profile and record steps/grooves so they can be shaded."""
    ends, sizes = _end_styles(rng, min(sections[0][2], sections[-1][2]), p_round)
    prof_u, prof_r = _profile(sections, ends, sizes, length)
    chamfers = tuple(size if style == "chamfer" else 0.0 for style, size in zip(ends, sizes, strict=True))
    part = Part(kind, length, prof_u, prof_r, flat, (chamfers[0], chamfers[1]))
    part.steps = [u1 for (_, u1, r, _), (_, _, r_next, _) in itertools.pairwise(sections) if r != r_next]
    for u0, u1, r, style in sections:
        if style == "groove":
            part.grooves.append((u0, u1))
            part.keep_out.append((u0, u1))
        elif style == "thread":
            part.thread = (
                u0 + (sizes[0] if u0 == 0 else 0.0),
                u1 - (sizes[1] if u1 == length else 0.0),
                max(3.0, r * 0.15),
            )
    return part


def _maybe_grooves(rng: np.random.Generator, sections: list[Section], length: float, rmax: float) -> list[Section]:
    """Grooves (circlip/relief) are a distractor: a narrow dent in the outline, not a protrusion."""
    if rng.random() < 0.45:
        for _ in range(int(rng.integers(1, 3))):
            sections = _add_groove(
                sections,
                length * rng.uniform(0.1, 0.9),
                rmax * rng.uniform(0.15, 0.35),
                rmax * rng.uniform(0.08, 0.2),
            )
    return sections


def _shaft(rng: np.random.Generator, length: float, rmax: float) -> Part:
    """Turned shaft: 1-3 diameters with shoulder steps, optional thread, grooves and a cross hole."""
    n = int(rng.integers(1, 4))
    edges = [0.0, *sorted(rng.uniform(0.18, 0.82, n - 1) * length), length]
    radii = rmax * rng.uniform(0.6, 1.0, n)
    radii[rng.integers(n)] = rmax
    sections: list[Section] = [(edges[i], edges[i + 1], float(radii[i]), "plain") for i in range(n)]
    if rng.random() < 0.3:
        i = 0 if rng.random() < 0.5 else n - 1
        u0, u1, r, _ = sections[i]
        if u1 - u0 > 0.2 * length:
            sections[i] = (u0, u1, r, "thread")
    part = _finish(rng, "shaft", length, _maybe_grooves(rng, sections, length, rmax), flat=False, p_round=0.1)
    if rng.random() < 0.3:
        u = length * rng.uniform(0.2, 0.8)
        r = float(np.interp(u, part.prof_u, part.prof_r))
        part.holes.append((u, 0.0, r * rng.uniform(0.25, 0.45), bool(rng.random() < 0.6)))
    return part


def _pin(rng: np.random.Generator, length: float, rmax: float) -> Part:
    """Pin: one diameter, rounded or chamfered ends, maybe a head, circlip grooves, a cotter hole."""
    if rng.random() < 0.3:
        head = length * rng.uniform(0.05, 0.1)
        sections: list[Section] = [(0.0, head, rmax, "plain"), (head, length, rmax * 0.72, "plain")]
    else:
        sections = [(0.0, length, rmax, "plain")]
    if rng.random() < 0.5:
        width, depth = rmax * 0.2, rmax * rng.uniform(0.08, 0.15)
        for u in (0.1 * length, 0.9 * length):
            sections = _add_groove(sections, u, width, depth)
    part = _finish(rng, "pin", length, sections, flat=False, p_round=0.5)
    if rng.random() < 0.5:
        u = length * (0.12 if rng.random() < 0.5 else 0.88)
        r = float(np.interp(u, part.prof_u, part.prof_r))
        part.holes.append((u, 0.0, r * rng.uniform(0.25, 0.4), True))
    return part


def _bolt(rng: np.random.Generator, length: float, rmax: float) -> Part:
    """Hex-head bolt seen from the side: faceted head, plain shank, threaded end."""
    head = rmax * rng.uniform(1.1, 1.5)
    shank = rmax * rng.uniform(0.55, 0.7)
    t0 = head + (length - head) * rng.uniform(0.1, 0.6)
    sections: list[Section] = [
        (0.0, head, rmax, "plain"),
        (head, t0, shank, "plain"),
        (t0, length, shank, "thread"),
    ]
    part = _finish(rng, "bolt", length, sections, flat=False, p_round=0.0)
    part.head = head
    return part


def _bar(rng: np.random.Generator, length: float, rmax: float) -> Part:
    """Flat bar: drilled holes (through or blind), an edge notch, a slot."""
    part = _finish(rng, "bar", length, [(0.0, length, rmax, "plain")], flat=True, p_round=0.3)
    for u in np.sort(rng.uniform(0.15, 0.85, int(rng.integers(0, 4)))) * length:
        if all(abs(u - h[0]) > rmax for h in part.holes):
            part.holes.append((float(u), 0.0, rmax * rng.uniform(0.2, 0.45), bool(rng.random() < 0.65)))
    if rng.random() < 0.4:
        u, w, d = length * rng.uniform(0.3, 0.7), rmax * rng.uniform(0.3, 0.7), rmax * rng.uniform(0.2, 0.4)
        side = 1.0 if rng.random() < 0.5 else -1.0
        if rng.random() < 0.5:
            poly = [(u - w / 2, rmax + 2), (u, rmax - d), (u + w / 2, rmax + 2)]
        else:
            poly = [
                (u - w / 2, rmax + 2),
                (u - w / 2, rmax - d),
                (u + w / 2, rmax - d),
                (u + w / 2, rmax + 2),
            ]
        part.cuts.append(np.asarray(poly) * [1.0, side])
        part.keep_out.append((u - w / 2, u + w / 2))
    if rng.random() < 0.3:
        u = length * rng.uniform(0.3, 0.7)
        half = length * rng.uniform(0.05, 0.12)
        if all(abs(u - h[0]) > half + rmax for h in part.holes):
            part.slots.append(_stadium(u - half, u + half, rmax * rng.uniform(0.2, 0.35)))
    return part


def _bracket(rng: np.random.Generator, length: float, rmax: float) -> Part:
    """Flat bracket: a wide ear with a hole at one end, a narrower arm, a hole at the other end."""
    ear = max(length * rng.uniform(0.2, 0.35), 2.2 * rmax)  # long enough that its hole stays inside
    arm = rmax * rng.uniform(0.6, 0.8)
    part = _finish(
        rng, "bracket", length, [(0.0, ear, rmax, "plain"), (ear, length, arm, "plain")], flat=True, p_round=0.6
    )
    part.holes.append((1.1 * rmax, 0.0, rmax * rng.uniform(0.3, 0.5), True))
    part.holes.append((length - arm, 0.0, arm * rng.uniform(0.3, 0.5), bool(rng.random() < 0.7)))
    return part


KINDS: dict[str, tuple[Callable[[np.random.Generator, float, float], Part], float, float]] = {
    "shaft": (_shaft, 3.0, 7.0),
    "pin": (_pin, 4.0, 8.0),
    "bolt": (_bolt, 3.0, 5.0),
    "bar": (_bar, 3.0, 6.5),
    "bracket": (_bracket, 2.8, 5.0),
}


def _orientation(rng: np.random.Generator) -> float:
    """Mostly horizontal or vertical, sometimes diagonal; either end may point either way."""
    mode = rng.choice(["h", "v", "d"], p=[0.4, 0.35, 0.25])
    if mode == "d":
        base = rng.uniform(15, 60) * (1 if rng.random() < 0.5 else -1)
    else:
        base = (0.0 if mode == "h" else 90.0) + rng.normal(0.0, 2.0)
    return math.radians(base + (180.0 if rng.random() < 0.5 else 0.0))


def _fit(rng: np.random.Generator, aspect_lo: float, aspect_hi: float, angle: float) -> tuple[float, float]:
    """Part length and half-width (px) such that the rotated part spans MIN_SIDE..MAX_SIDE."""
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    while True:
        aspect = rng.uniform(aspect_lo, aspect_hi)
        bw, bh = c + s / aspect, s + c / aspect  # bounding box of a 1 x 1/aspect rectangle
        lo = max(MIN_SIDE / min(bw, bh), 220 / max(bw, bh))
        hi = (MAX_SIDE - 16) / (max(bw, bh) + 0.08)  # room for margins and a burr
        if lo <= hi:
            length = rng.uniform(lo, hi)
            return length, length / aspect / 2


def _outline(part: Part) -> np.ndarray:
    """Closed outline polygon (counter-clockwise in u, v)."""
    top = np.stack([part.prof_u, -part.prof_r], axis=1)
    bottom = np.stack([part.prof_u[::-1], part.prof_r[::-1]], axis=1)
    return np.concatenate([top, bottom])


# ---------------------------------------------------------------- burrs and their look-alikes on the outline


@dataclass
class EdgeSpot:
    """A point on the outline with its unit tangent and outward normal, all in part coordinates."""

    base: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray

    def place(self, local: np.ndarray) -> np.ndarray:
        """(along-edge, outward) px around this spot -> part coordinates."""
        return self.base + local[:, :1] * self.tangent + local[:, 1:] * self.normal


@dataclass
class Mark:
    """A burr or a burr look-alike on the outline: a polygon in part coordinates, and how it is drawn."""

    poly: np.ndarray
    spot: EdgeSpot
    effect: str = "add"  # "add": joins the silhouette | "paint": recolours the body only | "cut": bitten out of it
    level: float | None = None  # grey level (1 = bright metal); None: the body's own shading there
    gain: float = 1.0  # multiplies the level
    rise: float = 0.0  # extra level `reach` px out from the spot: a burr is brightest towards its tip
    reach: float = 1.0
    tint: np.ndarray | None = None  # None: the part's own tint


def burr_height(length: float, long_side: float, rng: np.random.Generator) -> float:
    """How far a burr sticks out (px): 1-1.4% of the part's length for a few, 2.2-3% for the rest, never under
    BURR_MIN_224 px once the cut-out (long side `long_side` px before the burr) is padded and resized to 224."""
    shares = TINY_BURR_SHARE_OF_LENGTH if rng.random() < TINY_BURR_SHARE else BURR_SHARE_OF_LENGTH
    # Solve h >= BURR_MIN_224 / 224 * (long_side + h), so an end burr that lengthens the image counts too.
    c = BURR_MIN_224 / 224.0
    return max(length * rng.uniform(*shares), c * long_side / (1.0 - c))


def _sliver(rng: np.random.Generator, h: float, lean: float) -> list[tuple[float, float]]:
    """A leaning splinter with a jag cut into one flank."""
    w = h * rng.uniform(0.35, 0.5)
    notch = rng.uniform(0.4, 0.6)
    return [
        (-w, 0.0),
        (lean * h - w * 0.15, h),
        (lean * h * notch + w * (1.0 - notch) * 0.3, h * notch),
        (lean * h * notch + w * (1.0 - notch) + 0.25 * h * rng.uniform(0.4, 1.0), h * (notch - 0.12)),
        (w, 0.0),
    ]


def _flap(rng: np.random.Generator, h: float, lean: float) -> list[tuple[float, float]]:
    """A ragged flap of torn metal with an uneven top."""
    w = h * rng.uniform(0.7, 1.1)
    k = int(rng.integers(4, 7))
    heights = h * rng.uniform(0.55, 1.0, k)
    heights[rng.integers(k)] = h
    along = np.linspace(-w * 0.85, w * 0.85, k) + rng.uniform(-0.08, 0.08, k) * w
    return [(-w, 0.0), *((float(a + lean * b), float(b)) for a, b in zip(along, heights, strict=True)), (w, 0.0)]


def _teeth(rng: np.random.Generator, h: float, lean: float) -> list[tuple[float, float]]:
    """A short row of jagged teeth."""
    n = int(rng.integers(3, 6))
    w = h * rng.uniform(0.5, 0.8) * n / 2
    along = np.linspace(-w, w, 2 * n + 1)
    heights = [h * (rng.uniform(0.7, 1.0) if i % 2 else rng.uniform(0.15, 0.35)) for i in range(2 * n + 1)]
    heights[0] = heights[-1] = 0.0
    heights[2 * int(rng.integers(n)) + 1] = h
    return [(float(a + lean * b), float(b)) for a, b in zip(along, heights, strict=True)]


def _rolled_lip(rng: np.random.Generator, h: float, lean: float) -> list[tuple[float, float]]:
    """A rolled-over lip: a narrow wall whose crest curls over into a hook (towards the side `lean` says)."""
    w = h * rng.uniform(0.35, 0.5)
    reach = h * rng.uniform(0.6, 0.9)  # how far the hook's tip hangs out sideways
    hook = [
        (-w, 0.0),
        (-0.7 * w, 0.55 * h),
        (-0.2 * w + 0.1 * h, 0.9 * h),
        (0.4 * reach, h),
        (reach, h * rng.uniform(0.7, 0.85)),
        (0.6 * reach, h * rng.uniform(0.6, 0.7)),
        (0.5 * w, 0.4 * h),
        (w, 0.0),
    ]
    return hook if lean >= 0 else [(-a, b) for a, b in reversed(hook)]


def _rolled_edge(rng: np.random.Generator, h: float, lean: float) -> list[tuple[float, float]]:
    """A lip rolled over along a stretch of edge, as a saw or a blunt tool leaves it: long, low, wavy."""
    w = h * rng.uniform(2.0, 4.0)
    along = np.linspace(-w, w, 2 * int(w / h * 3) + 3)
    taper = np.sin(np.linspace(0.0, math.pi, along.size)) ** 0.4
    crest = h * taper * rng.uniform(0.6, 1.0, along.size)
    crest[1 + int(rng.integers(along.size - 2))] = h
    return [(float(a + lean * b), float(b)) for a, b in zip(along, crest, strict=True)]


BURR_SHAPES = (_sliver, _flap, _teeth, _rolled_lip, _rolled_edge)


def _burr_shape(rng: np.random.Generator, h: float) -> np.ndarray:
    """A burr h px tall in (along-edge, outward) px; its base sits ROOT px inside the body, so body and burr
    join without a seam."""
    top = BURR_SHAPES[int(rng.integers(len(BURR_SHAPES)))](rng, h, rng.uniform(-0.35, 0.35))
    return np.asarray([(top[0][0], -ROOT), *top, (top[-1][0], -ROOT)])


def _edge_spot(
    rng: np.random.Generator, part: Part, outline: np.ndarray, half: float, *, end_share: float, min_run: float
) -> EdgeSpot:
    """A random spot on the outline for a mark 2 * half px wide: at an end (faces, corners) with probability
    end_share, else on a side edge; outside keep-out ranges and on a straight run of at least min_run px
    (both waived where no such edge exists)."""
    seg = np.roll(outline, -1, axis=0) - outline
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    mid = outline[:, 0] + seg[:, 0] / 2
    length = part.length
    allowed = lengths >= min_run
    for lo, hi in part.keep_out:
        allowed &= (mid < lo - 2 * half) | (mid > hi + 2 * half)
    ends = (mid < 0.08 * length) | (mid > 0.92 * length)
    sides = (mid > 0.1 * length) & (mid < 0.9 * length)
    first, second = (ends, sides) if rng.random() < end_share else (sides, ends)
    ok = next(c for c in (first & allowed, second & allowed, allowed, ends) if lengths[c].sum() > 0)
    weights = np.where(ok, lengths, 0.0)
    i = int(rng.choice(len(weights), p=weights / weights.sum()))
    # Most of the base stays on the edge (all of it for a stretch of min_run), so no mark floats beside a corner.
    lo = min(0.5, (1.0 if min_run else 0.6) * half / lengths[i])
    if ends[i]:  # near the corners of the end
        t = rng.uniform(lo, max(lo, 0.35))
        t = t if rng.random() < 0.5 else 1.0 - t
    else:
        t = rng.uniform(max(lo, 0.2), min(1.0 - lo, 0.8)) if lo < 0.5 else 0.5
    tangent = seg[i] / lengths[i]
    normal = np.array([tangent[1], -tangent[0]])  # outward for a counter-clockwise outline
    return EdgeSpot(outline[i] + t * seg[i], tangent, normal)


def _pick_spot(
    rng: np.random.Generator,
    part: Part,
    outline: np.ndarray,
    half: float,
    *,
    taken: list[np.ndarray],
    end_share: float = 0.7,
    min_run: float = 0.0,
) -> EdgeSpot:
    """_edge_spot, tried again (up to 8 times) while it lands within MARK_SPACING of the part's length of a
    spot already taken; the spot is added to `taken`."""
    for _ in range(8):
        spot = _edge_spot(rng, part, outline, half, end_share=end_share, min_run=min_run)
        if all(np.hypot(*(spot.base - other)) >= MARK_SPACING * part.length for other in taken):
            break
    taken.append(spot.base)
    return spot


def _ribbon(points: np.ndarray, width: float) -> np.ndarray:
    """A polyline thickened to a polygon `width` px wide."""
    step = np.gradient(points, axis=0)
    side = np.stack([-step[:, 1], step[:, 0]], axis=1) / np.hypot(step[:, 0], step[:, 1])[:, None] * width / 2
    return np.concatenate([points + side, (points - side)[::-1]])


def _burrs(
    rng: np.random.Generator, part: Part, outline: np.ndarray, h: float, *, taken: list[np.ndarray]
) -> list[Mark]:
    """1-3 burrs h px tall (one tool, one height), each of its own shape: mostly bright bare metal, on some parts
    (SUBTLE_BURR_SHARE) dull and in the part's own tint, often darker than the part."""
    count = int(rng.choice(len(BURR_COUNT_SHARES), p=BURR_COUNT_SHARES)) + 1
    subtle = rng.random() < SUBTLE_BURR_SHARE
    burrs = []
    for _ in range(count):
        local = _burr_shape(rng, h)
        width = float(np.ptp(local[:, 0]))
        # A wide burr (a rolled edge) lies along one straight edge.
        spot = _pick_spot(rng, part, outline, width / 2, taken=taken, min_run=width if width > 2.5 * h else 0.0)
        level, rise, tint = (
            (rng.uniform(0.45, 0.7), 0.08, None) if subtle else (rng.uniform(1.0, 1.15), 0.12, BARE_STEEL)
        )
        burrs.append(Mark(spot.place(local), spot, level=level, rise=rise, reach=h, tint=tint))
    return burrs


def _chip(rng: np.random.Generator, part: Part, outline: np.ndarray, taken: list[np.ndarray]) -> list[Mark]:
    """A chip: a jagged bite out of the edge, as deep as a burr is tall, with a torn bright or shadowed wall."""
    depth = part.length * rng.uniform(*CHIP_SHARE_OF_LENGTH)
    half = depth * rng.uniform(0.6, 1.3)
    spot = _pick_spot(rng, part, outline, half, taken=taken)
    along = np.sort(rng.uniform(-0.8, 0.8, int(rng.integers(2, 5)))) * half
    inward = -depth * rng.uniform(0.5, 1.0, along.size)
    inward[rng.integers(along.size)] = -depth
    bite = np.asarray([(-half, ROOT), *zip(along, inward, strict=True), (half, ROOT)])
    wall = bite * (1.0 + rng.uniform(1.0, 2.0) / depth)  # the bite grown by 1-2 px: its torn wall
    if rng.random() < 0.4:
        rim = Mark(spot.place(wall), spot, "paint", level=rng.uniform(0.95, 1.1), tint=BARE_STEEL)
    else:
        rim = Mark(spot.place(wall), spot, "paint", gain=rng.uniform(0.4, 0.6))
    return [rim, Mark(spot.place(bite), spot, "cut")]


def _flash(rng: np.random.Generator, part: Part, outline: np.ndarray, taken: list[np.ndarray]) -> list[Mark]:
    """Casting flash: a thin fin with a ragged crest along a stretch of straight edge."""
    seg = np.roll(outline, -1, axis=0) - outline
    longest_run = float(np.hypot(seg[:, 0], seg[:, 1]).max())
    half = min(part.length * rng.uniform(*FLASH_SPAN_SHARE_OF_LENGTH) / 2, 0.45 * longest_run)
    height = max(1.2, part.length * rng.uniform(*FLASH_SHARE_OF_LENGTH))
    spot = _pick_spot(rng, part, outline, half, taken=taken, end_share=0.3, min_run=2 * half)
    along = np.linspace(-half, half, max(8, int(half)))
    taper = np.sin(np.linspace(0.0, math.pi, along.size)) ** 0.3
    crest = height * taper * (0.75 + 0.25 * np.clip(_smooth_noise(rng, along.size, 3), -1.0, 1.0))
    spike = rng.integers(along.size // 4, 3 * along.size // 4)
    crest[spike] *= rng.uniform(1.3, 2.0)  # as tall as a small burr
    fin = np.asarray([(-half, -ROOT), *zip(along, crest, strict=True), (half, -ROOT)])
    return [Mark(spot.place(fin), spot, gain=rng.uniform(0.7, 1.05))]


def _dust(rng: np.random.Generator, part: Part, outline: np.ndarray, taken: list[np.ndarray]) -> list[Mark]:
    """1-2 specks of dust or lint caught on the edge, poking out of the silhouette."""
    spread = part.length * 0.012
    spot = _pick_spot(rng, part, outline, spread, taken=taken, end_share=0.5)
    light = rng.random() < 0.35
    marks = []
    for _ in range(int(rng.integers(1, 3))):
        size = part.length * rng.uniform(*DUST_SHARE_OF_LENGTH)
        centre = np.array([rng.uniform(-spread, spread), size * rng.uniform(-0.1, 0.45)])
        if rng.random() < 0.25:  # a fibre lying across the edge
            ang = rng.uniform(0.3, math.pi - 0.3)
            t = np.linspace(-1.5, 1.5, 7)[:, None] * size
            bend = rng.uniform(-0.15, 0.15) * (t / size) ** 2 * size
            shape = _ribbon(centre + t * [math.cos(ang), math.sin(ang)] + bend * [-math.sin(ang), math.cos(ang)], 0.8)
        else:
            phi = np.linspace(0.0, 2 * math.pi, 9, endpoint=False)
            rad = size / 2 * rng.uniform(0.6, 1.0, phi.size)
            shape = centre + np.stack([rad * np.cos(phi), rad * np.sin(phi)], axis=1)
        level, tint = (rng.uniform(0.7, 0.95), DUST) if light else (rng.uniform(0.12, 0.3), LINT)
        marks.append(Mark(spot.place(shape), spot, level=level, tint=tint))
    return marks


def _edge_scratch(rng: np.random.Generator, part: Part, outline: np.ndarray, taken: list[np.ndarray]) -> list[Mark]:
    """A scratch run off the edge: a fine line across the body that ends in a hair-thin lip just past it."""
    spot = _pick_spot(rng, part, outline, 2.0, taken=taken, end_share=0.3)
    run = min(part.length * rng.uniform(0.04, 0.12), 1.5 * float(np.median(part.prof_r)))
    ang = rng.uniform(-1.0, 1.0)  # from the outward normal
    way = np.array([math.sin(ang), math.cos(ang)])
    line = np.linspace(-run, rng.uniform(*SCRATCH_OVERSHOOT), 6)[:, None] * way
    shape = _ribbon(line, rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:
        return [Mark(spot.place(shape), spot, level=rng.uniform(1.0, 1.15), tint=BARE_STEEL)]
    return [Mark(spot.place(shape), spot, gain=rng.uniform(0.4, 0.6))]


# Each look-alike's maker and its weight among them.
MarkMaker = Callable[[np.random.Generator, Part, np.ndarray, list[np.ndarray]], list[Mark]]
DISTRACTORS: dict[str, tuple[MarkMaker, float]] = {
    "chip": (_chip, 0.35),
    "flash": (_flash, 0.2),
    "dust": (_dust, 0.25),
    "scratch": (_edge_scratch, 0.2),
}


def _distractors(
    rng: np.random.Generator, part: Part, outline: np.ndarray, burr: bool, *, taken: list[np.ndarray]
) -> list[Mark]:
    """A burr look-alike on the edge of some good parts and (as in real life) of fewer burred ones."""
    if rng.random() >= DISTRACTED_SHARE[burr]:
        return []
    makers, weights = zip(*DISTRACTORS.values(), strict=True)
    make = makers[int(rng.choice(len(makers), p=np.asarray(weights) / sum(weights)))]
    return make(rng, part, outline, taken)


# ---------------------------------------------------------------- rendering


def _raster(size: tuple[int, int], add: list[np.ndarray], sub: list[np.ndarray]) -> np.ndarray:
    """Coverage in 0..1 of canvas-px polygons (add, then subtract), anti-aliased by supersampling."""
    img = Image.new("L", (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(img)
    for polys, fill in ((add, 255), (sub, 0)):
        for poly in polys:
            draw.polygon([(float(x), float(y)) for x, y in poly * SUPERSAMPLE], fill=fill)
    return np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """1-D unit-ish noise, box-smoothed over `width` samples."""
    raw = rng.normal(0.0, 1.0, n + width)
    kernel = np.ones(width) / math.sqrt(width)
    return np.convolve(raw, kernel, mode="valid")[:n]


def _shade(rng: np.random.Generator, part: Part, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Grey-level intensity (1 = bright metal) of the body: cylinder or flat shading, texture, features."""
    r = np.maximum(np.interp(u, part.prof_u, part.prof_r), 1.0)
    n = np.clip(v / r, -1.0, 1.0)
    length, rmax = part.length, float(part.prof_r.max())
    if part.flat:
        phi, width = rng.uniform(0, math.pi), rng.uniform(0.2, 0.5) * length
        band = np.exp(-((((u * math.cos(phi) + v * math.sin(phi)) - rng.uniform(0, length)) / width) ** 2))
        inten = rng.uniform(0.55, 0.75) + rng.uniform(-0.1, 0.1) * (u / length - 0.5) + rng.uniform(-0.08, 0.08) * n
        inten = inten + rng.uniform(0.1, 0.25) * band
        edge = np.minimum(r - np.abs(v), np.minimum(u, length - u))
        bevel = rng.uniform(1.5, 3.0)
        inten = np.where(edge < bevel, inten * (1.3 if rng.random() < 0.5 else 0.7), inten)
    else:
        inten = rng.uniform(0.2, 0.35) + rng.uniform(0.4, 0.55) * np.sqrt(1.0 - n**2) ** rng.uniform(0.6, 1.4)
        inten = inten + rng.uniform(0.3, 0.5) * np.exp(
            -(((n - rng.uniform(-0.55, 0.55)) / rng.uniform(0.08, 0.2)) ** 2)
        )
        inten = inten + rng.uniform(0.05, 0.2) * np.exp(-(((n - rng.uniform(-0.8, 0.8)) / rng.uniform(0.15, 0.3)) ** 2))
    if part.head:
        facets = np.asarray(rng.uniform([0.35, 0.7, 0.45], [0.55, 1.0, 0.65]))[np.digitize(n, [-0.5, 0.5])]
        facets = np.where(np.abs(np.abs(n) - 0.5) < 0.04, 0.3, facets)
        inten = np.where(u < part.head, facets + 0.08 * (u / part.head), inten)
    chamfer0, chamfer1 = part.chamfers
    inten = np.where((u < chamfer0) | (u > length - chamfer1), inten * 0.8, inten)
    for step in part.steps:
        inten = np.where(np.abs(u - step) < 1.0, inten * rng.uniform(0.45, 0.7), inten)
    for u0, u1 in part.grooves:
        inten = np.where((u > u0) & (u < u1), inten * 0.6, inten)
    if part.thread is not None:
        t0, t1, pitch = part.thread
        saw = np.abs(((u + 0.2 * v) / pitch) % 1.0 - 0.5) * 2.0
        inten = np.where((u > t0) & (u < t1), inten * (0.6 + 0.55 * saw), inten)
    for hu, hv, rad, through in part.holes:
        d = np.hypot(u - hu, v - hv)
        if through:
            inten = inten * (1.0 - 0.5 * np.exp(-(((d - rad) / 1.2) ** 2)))
        else:
            inside = 0.12 + 0.18 * (d / rad) ** 2
            inten = np.where(d < rad, inside, inten) + 0.3 * np.exp(-(((d - rad) / 1.0) ** 2))
    # Brushed texture: streaks along the long axis, slightly skewed, plus slow variation along it.
    span = rmax + 8.0
    grid = np.arange(-span, span, 0.5)
    streaks = np.convolve(rng.normal(0.0, 1.0, grid.size), [0.25, 0.5, 0.25], mode="same")
    skew = rng.uniform(-0.01, 0.01)
    texture = rng.uniform(0.025, 0.05) * np.interp(v + skew * u, grid, streaks)
    slow = _smooth_noise(rng, int(length) // 8 + 2, 8)
    texture = texture + 0.012 * np.interp(u / 8.0, np.arange(slow.size), slow)
    return inten * (1.0 + texture)


def _blemishes(
    rng: np.random.Generator,
    part: Part,
    u: np.ndarray,
    v: np.ndarray,
    *,
    rot: np.ndarray,
    origin: np.ndarray,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Scratches and edge glints (added to intensity) and stains (weight towards a rust colour).

    All of them stay inside the outline (the caller multiplies by coverage); what sticks out is a Mark."""
    rmax = float(part.prof_r.max())
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.poisson(1.5))):
        start = np.array([rng.uniform(0.15, 0.85) * part.length, rng.uniform(-0.6, 0.6) * rmax])
        ang = rng.normal(0.0, 0.4) if rng.random() < 0.7 else rng.uniform(0, math.pi)
        end = start + rng.uniform(10, 60) * np.array([math.cos(ang), math.sin(ang)])
        (x0, y0), (x1, y1) = np.stack([start, end]) @ rot - origin
        draw.line([(float(x0), float(y0)), (float(x1), float(y1))], fill=int(rng.choice([60, 200])), width=1)
    delta = np.asarray(layer, dtype=np.float32) / 255.0 * (0.35 if rng.random() < 0.5 else -0.35)
    for _ in range(int(rng.poisson(0.7))):
        gu, side = rng.uniform(0.1, 0.9) * part.length, 1.0 if rng.random() < 0.5 else -1.0
        r = float(np.interp(gu, part.prof_u, part.prof_r))
        sig = rng.uniform(1.5, 3.0)
        # Near the edge but wholly inside it: only burrs and their look-alikes stick out of the silhouette.
        gv = side * max(0.5 * r, r - 2.5 * sig - 1.5)
        delta = delta + 0.45 * np.exp(-(((u - gu) / (sig * 4)) ** 2 + ((v - gv) / sig) ** 2) / 2)
    stain = np.zeros_like(u)
    for _ in range(int(rng.poisson(0.8))):
        su, sv, sig = (
            rng.uniform(0.1, 0.9) * part.length,
            rng.uniform(-0.5, 0.5) * rmax,
            rng.uniform(3, 0.6 * rmax),
        )
        stain = stain + rng.uniform(0.3, 0.7) * np.exp(-((u - su) ** 2 + (v - sv) ** 2) / (2 * sig**2))
    return delta, np.clip(stain, 0.0, 0.8)


def _tint(rng: np.random.Generator) -> np.ndarray:
    """Steel grey, slightly warm or cool, sometimes darker or oxidised brown."""
    grey = rng.uniform(0.76, 0.84) + rng.uniform(-0.04, 0.04) * np.array([1.0, 0.1, -1.0])
    if rng.random() < 0.12:
        grey = np.array([0.66, 0.57, 0.48]) * rng.uniform(0.9, 1.1)
    return grey * rng.choice([1.0, 0.75, 0.55], p=[0.6, 0.25, 0.15])


def _to_rgb(inten: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """Tinted metal colour; highlights desaturate towards white like real specular reflections."""
    base = inten[..., None] * tint
    return np.clip(base + np.maximum(inten - 0.85, 0.0)[..., None] * (1.0 - tint), 0.0, 1.0) * 255.0


def _background(rng: np.random.Generator, size: tuple[int, int], cov: np.ndarray) -> np.ndarray:
    """What an image editor leaves under transparent pixels: white, paper, or the original photo."""
    w, h = size
    kind = rng.choice(["white", "paper", "photo", "grey"], p=[0.3, 0.25, 0.3, 0.15])
    if kind == "white":
        return np.full((h, w, 3), 255.0, dtype=np.float32)
    if kind == "grey":
        return np.full((h, w, 3), float(rng.choice([128, 160, 192, 204])), dtype=np.float32)
    if kind == "paper":
        colour = rng.uniform([228, 226, 215], [250, 248, 245])
    else:
        colour = np.asarray([(120, 124, 130), (68, 108, 84), (150, 136, 118), (92, 104, 122)][rng.integers(4)])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((xs - w * rng.uniform(0.3, 0.7)) / w) ** 2 + ((ys - h * rng.uniform(0.3, 0.7)) / h) ** 2
    light = 1.0 - 0.25 * d2 + rng.uniform(-0.08, 0.08) * (xs / w - 0.5)
    blob = Image.new("L", size, 0)
    blob.paste(Image.fromarray((cov * 255).astype(np.uint8)), (int(rng.integers(3, 12)), int(rng.integers(3, 12))))
    shadow = np.asarray(blob.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 10)))), dtype=np.float32) / 255
    bg = colour[None, None, :] * (light * (1.0 - 0.45 * shadow))[..., None]
    if kind == "photo":
        bg = bg + rng.normal(0.0, 1.5, (h, w, 1))
    return bg.astype(np.float32)


def _jpeg_noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Mild sensor plus 8x8-block noise, like a re-saved phone JPEG (grey, added to all channels)."""
    h, w = shape
    blocks = np.repeat(np.repeat(rng.normal(0.0, 1.0, (h // 8 + 1, w // 8 + 1)), 8, 0), 8, 1)[:h, :w]
    return (rng.normal(0.0, 1.3, shape) + blocks).astype(np.float32)[..., None]


@dataclass
class Canvas:
    """The image's pixel grid: part coordinates rotated by `rot`, then shifted by -origin."""

    rot: np.ndarray
    origin: np.ndarray
    size: tuple[int, int]

    def px(self, poly: np.ndarray) -> np.ndarray:
        """Part coordinates -> canvas px."""
        return poly @ self.rot - self.origin

    def part_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) part coordinates of every pixel centre."""
        ys, xs = np.mgrid[0 : self.size[1], 0 : self.size[0]].astype(np.float64) + 0.5
        qx, qy = xs + self.origin[0], ys + self.origin[1]
        rot = self.rot
        return qx * rot[0, 0] + qy * rot[0, 1], qx * rot[1, 0] + qy * rot[1, 1]


def _paint_marks(
    rgb: np.ndarray,
    marks: list[Mark],
    canvas: Canvas,
    u: np.ndarray,
    *,
    v: np.ndarray,
    inten: np.ndarray,
    tint: np.ndarray,
) -> np.ndarray:
    """The marks' own colours over the body's (a cut has none: it is not there)."""
    for mark in marks:
        if mark.effect == "cut":
            continue
        cov = _raster(canvas.size, [canvas.px(mark.poly)], [])[..., None]
        outward = (u - mark.spot.base[0]) * mark.spot.normal[0] + (v - mark.spot.base[1]) * mark.spot.normal[1]
        level = (inten if mark.level is None else mark.level) * mark.gain + mark.rise * np.clip(
            outward / mark.reach, 0, 1
        )
        colour = _to_rgb(level, tint if mark.tint is None else mark.tint)
        rgb = rgb * (1.0 - cov) + colour * cov
    return rgb


def render(rng: np.random.Generator, burr: bool) -> Image.Image:
    """One cut-out: a random part, optionally burred, maybe with burr look-alikes, on a canvas that hugs it."""
    kind = str(rng.choice(list(KINDS)))
    build, aspect_lo, aspect_hi = KINDS[kind]
    angle = _orientation(rng)
    length, rmax = _fit(rng, aspect_lo, aspect_hi, angle)
    part = build(rng, length, rmax)
    outline = _outline(part)
    rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    long_side = float(np.ptp(outline @ rot, axis=0).max()) + 2 * 7.0  # with the widest margins
    taken: list[np.ndarray] = []
    # Made for both classes so that both consume the same random numbers up to here.
    burrs = _burrs(rng, part, outline, burr_height(length, long_side, rng), taken=taken)
    marks = (burrs if burr else []) + _distractors(rng, part, outline, burr, taken=taken)
    added = [outline, *(m.poly for m in marks if m.effect == "add")]
    extent = np.concatenate(added) @ rot
    margin = rng.uniform(2.0, 7.0)
    origin = extent.min(axis=0) - margin
    far = np.ceil(extent.max(axis=0) + margin - origin).astype(int)
    canvas = Canvas(rot, origin, (int(far[0]), int(far[1])))

    holes = [_circle(hu, hv, rad) for hu, hv, rad, through in part.holes if through]
    removed = part.cuts + part.slots + holes + [m.poly for m in marks if m.effect == "cut"]
    cov = _raster(canvas.size, [canvas.px(s) for s in added], [canvas.px(p) for p in removed])

    u, v = canvas.part_coords()
    inten = _shade(rng, part, u, v)
    delta, stain = _blemishes(rng, part, u, v, rot=rot, origin=origin, size=canvas.size)
    tint = _tint(rng)
    rgb = _to_rgb(inten + delta, tint)
    rgb = rgb * (1.0 - stain[..., None]) + stain[..., None] * np.array([120.0, 84.0, 52.0]) * tint.mean()
    rgb = _paint_marks(rgb, marks, canvas, u, v=v, inten=inten, tint=tint)
    rgb = rgb + _jpeg_noise(rng, (canvas.size[1], canvas.size[0]))
    bg = _background(rng, canvas.size, cov)
    alpha = cov
    if rng.random() < 0.3:  # some editors feather the selection edge
        feathered = Image.fromarray(np.rint(cov * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
        alpha = np.minimum(np.asarray(feathered, dtype=np.float32) / 255.0 * 1.1, 1.0)
    out = rgb * cov[..., None] + bg * (1.0 - cov[..., None])
    rgba = np.dstack([np.clip(np.rint(out), 0, 255), np.rint(alpha * 255)]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


# ---------------------------------------------------------------- names, labels, output


def _random_name(rng: np.random.Generator) -> str:
    """A file name the way people and cameras produce them."""
    n, k = int(rng.integers(1, 200)), int(rng.integers(1, 5))
    ext = str(rng.choice(["png", "PNG", "Png"], p=[0.6, 0.3, 0.1]))
    letter = "ABCDEFGH"[rng.integers(8)]
    templates = [
        f"IMG_{rng.integers(1000, 9999)}.{ext}",
        f"IMG_{rng.integers(1000, 9999)} ({k}).{ext}",
        f"DSC{rng.integers(0, 99999):05d}.{ext}",
        f"Part {n}.{ext}",
        f"part_{n}.{ext}",
        f"part {n} (copy).{ext}",
        f"零件 {n}.{ext}",
        f"零件{n}-侧面.{ext}",
        f"轴 {n}.{ext}",
        f"轴_{n} 毛刺检查.{ext}",
        f"shaft-{letter} ({n}).{ext}",
        f"Shaft {letter}{n}.{ext}",
        f"Bracket  {letter}{n}.{ext}",
        f"pin_{n}_final_FINAL.{ext}",
        f"Bolt M{rng.choice([6, 8, 10, 12])}x{rng.integers(3, 12) * 10} ({n}).{ext}",
        f"Photo 2024-0{k + 4}-{n % 28 + 1:02d} at {n % 10 + 8}.{n % 60:02d}.{k * 7:02d}.{ext}",
        f"burr check {n}.{ext}",
        f"Scan_{n}_ok.{ext}",
    ]
    return templates[int(rng.integers(len(templates)))]


def make_names(rng: np.random.Generator, count: int) -> list[str]:
    """`count` names: the awkward fixed ones first, then random ones; unique even case-insensitively."""
    names = list(SPECIAL_NAMES[:count])
    seen = {name.casefold() for name in names}
    while len(names) < count:
        name = _random_name(rng)
        if name.casefold() not in seen:
            seen.add(name.casefold())
            names.append(name)
    return names


def generate(out_dir: Path, count: int = DEFAULT_COUNT, seed: int = 2024) -> None:
    """Write out_dir/images/*.png and out_dir/labels.csv; identical bytes for identical arguments.

    Stale PNGs in out_dir/images from an earlier run with other arguments are removed, so labels.csv
    always lists exactly the images present.
    """
    meta, *per_image = np.random.SeedSequence(seed).spawn(count + 1)
    rng = np.random.default_rng(meta)
    names = make_names(rng, count)
    n_burr = round(count * BURR_SHARE)
    labels = rng.permutation(np.array([1] * n_burr + [0] * (count - n_burr)))
    images = Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    for stale in images.iterdir():
        if stale.suffix.lower() == ".png" and stale.name not in names:
            stale.unlink()
    for name, label, seq in zip(names, labels, per_image, strict=True):
        render(np.random.default_rng(seq), bool(label)).save(images / name, format="PNG", optimize=True)
    with open(Path(out_dir) / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "label"])
        writer.writerows(sorted(zip(names, (int(x) for x in labels), strict=True)))


def main() -> None:
    """CLI wrapper around generate()."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default: data/demo)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"number of images (default: {DEFAULT_COUNT})")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (default: 2024)")
    args = parser.parse_args()
    generate(args.out, args.count, args.seed)


if __name__ == "__main__":
    main()
