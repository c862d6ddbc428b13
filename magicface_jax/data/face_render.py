"""Rasterizes a procedural face over a scene: PIL polygons on a supersampled canvas, box-filtered down and
composited (premultiplied) over the background, with the face and person masks and the 68 landmarks."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from magicface_jax.data import face_geometry as geo
from magicface_jax.data.face_params import HAIR_STYLES, Identity, Pose

_BEHIND = -0.3  # depth of what lies behind the face (hair at the back, neck, body)
_SCLERA = (238, 234, 228)
_MOUTH = (70, 25, 30)
_TEETH = (236, 231, 220)


@dataclasses.dataclass(frozen=True)
class RenderedFace:
    image: np.ndarray  # uint8 (S, S, 3)
    face_mask: np.ndarray  # bool (S, S): the face's skin and features, not hair covering it
    person_mask: np.ndarray  # bool (S, S): every pixel the person touches (face, hair, ears, neck, clothes)
    landmarks: np.ndarray  # float32 (68, 2): (x, y) pixels


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in color)


def _rgba(color, factor: float, alpha: float) -> tuple[int, int, int, int]:
    return (*_shade(color, factor), int(np.clip(alpha, 0, 1) * 255))


def _smooth(points: np.ndarray, closed: bool = False, per_segment: int = 6) -> np.ndarray:
    """A Catmull-Rom curve through `points` (N, 2)."""
    pts = (
        np.concatenate([points[-1:], points, points[:2]])
        if closed
        else np.concatenate([points[:1], points, points[-1:]])
    )
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    if not closed:
        out.append(points[-1:])
    return np.concatenate(out)


def _ellipse(cx: float, cy: float, rx: float, ry: float, count: int = 24) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], -1)


def _arc(x0: float, x1: float, y: float, bend: float, count: int = 8) -> np.ndarray:
    """A shallow arc from x0 to x1 at height y, its middle raised by `bend`."""
    x = np.linspace(x0, x1, count)
    return np.stack([x, y - bend * np.sin(np.linspace(0, np.pi, count))], -1)


class _Canvas:
    """Supersampled person layer: colour on black, coverage (alpha) and the face mask."""

    def __init__(self, size: int, supersample: int, pose: Pose):
        self.size = size * supersample
        self.pose = pose
        self.unit = geo.UNIT * self.size * pose.scale
        self.rgb = Image.new("RGB", (self.size, self.size))
        self.alpha = Image.new("L", (self.size, self.size))
        self.face = Image.new("L", (self.size, self.size))
        self.draw = ImageDraw.Draw(self.rgb, "RGBA")
        self.draw_alpha = ImageDraw.Draw(self.alpha)
        self.draw_face = ImageDraw.Draw(self.face)

    def px(self, points: np.ndarray, depth: np.ndarray | float | None = None) -> list[tuple[float, float]]:
        depth = geo.head_depth(points) if depth is None else depth
        return [tuple(p) for p in geo.project(points, depth, self.pose, self.size)]

    def fill(self, points, color, depth=None, person: bool = True) -> None:
        xy = self.px(points, depth)
        self.draw.polygon(xy, fill=color)
        if person:
            self.draw_alpha.polygon(xy, fill=255)

    def line(self, points, color, width: float, depth=None) -> None:
        self.draw.line(
            self.px(points, depth), fill=color, width=max(1, round(width * self.unit)), joint="curve"
        )


def _hair_line(identity: Identity, top: float, count: int = 40) -> np.ndarray:
    """The hairline from the subject's left temple over the forehead to the right, `top` above the eyes."""
    psi = np.linspace(0.0, np.pi, count)
    phase = np.random.default_rng(identity.hair_seed).uniform(0, 2 * np.pi, 3)
    jag = 0.025 * (
        np.sin(9 * psi + phase[0]) + np.sin(17 * psi + phase[1]) + 0.5 * np.sin(31 * psi + phase[2])
    )
    side = -0.05
    y = side - (top + side) * np.sin(psi) ** 0.6 + jag
    return np.stack([0.98 * identity.face_width * np.cos(psi), y], -1)


def _hair_cap(identity: Identity, hairline_top: float, volume: float) -> np.ndarray:
    psi = np.linspace(np.pi, 0.0, 40)
    outer = np.stack(
        [
            (identity.face_width + volume) * np.cos(psi),
            identity.jaw_top - (identity.jaw_top + identity.head_top + volume) * np.sin(psi) ** 0.9 - 0.05,
        ],
        -1,
    )
    return np.concatenate([outer, _hair_line(identity, hairline_top)])


def _draw_body(canvas: _Canvas, identity: Identity) -> None:
    c, w = identity.chin, identity.face_width
    hair = identity.hair_color
    style = HAIR_STYLES[identity.hair_style]
    if style == "long":
        back = np.array([[-w - 0.2, -0.4], [-w - 0.35, c + 0.9], [w + 0.35, c + 0.9], [w + 0.2, -0.4]])
        canvas.fill(back, _shade(hair, 0.85), _BEHIND)
    elif style == "curly":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        bumps = 1 + 0.06 * np.sin(12 * angles + identity.hair_seed % 7)
        puff = np.stack([(w + 0.45) * bumps * np.cos(angles), -0.55 + 1.05 * bumps * np.sin(angles)], -1)
        canvas.fill(puff, _shade(hair, 0.9), _BEHIND)
    shoulders = np.array([[0.6, c + 0.45], [1.6, c + 0.65], [2.3, c + 1.1], [2.8, 7.0]])
    body = np.concatenate([shoulders * [-1, 1], shoulders[::-1]])
    canvas.fill(body, _shade(identity.clothes_color, 1.0), _BEHIND)
    neck = np.array(
        [[-0.5 * w, 0.8], [-0.56 * w, c + 0.7], [0, c + 0.85], [0.56 * w, c + 0.7], [0.5 * w, 0.8]]
    )
    canvas.fill(neck, _shade(identity.skin, 0.8), _BEHIND)
    for side in (-1.0, 1.0):
        ear = _ellipse(side * (w + 0.03), 0.18, 0.1, 0.22)
        canvas.fill(ear, _shade(identity.skin, 0.9), -0.1)
        canvas.fill(_ellipse(side * (w + 0.04), 0.18, 0.05, 0.13), _shade(identity.skin, 0.72), -0.05)


def _shade_face(canvas: _Canvas, identity: Identity, s: dict[str, float]) -> None:
    """Rounds the flat skin: darker at the silhouette, cheeks lifted and lit by AU6/AU12, chin by AU17."""
    mask = np.asarray(canvas.face) > 0
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    fx, fy = geo.unproject(px, py, canvas.pose, canvas.size)
    light = 0.8 + 0.2 * geo.head_depth(np.stack([fx, fy], -1)) / 0.85
    cheek_y = 0.4 - 0.016 * s["AU6"] - 0.008 * s["AU12"]
    cheek_amp = 0.03 + 0.11 * s["AU6"] / 5 + 0.05 * s["AU12"] / 5
    cheeks = sum(np.exp(-((fx - side * 0.47) ** 2 + (fy - cheek_y) ** 2) / 0.03) for side in (-1, 1))
    chin_y = identity.chin - 0.22 + 0.045 * s["AU26"]
    chin = np.exp(-(fx**2 + (fy - chin_y) ** 2) / 0.02) * 0.09 * s["AU17"] / 5
    factor = light[..., None] * (1 + (cheek_amp * cheeks + chin)[..., None] * np.array([1.0, 0.8, 0.8]))
    region = np.asarray(canvas.rgb)[y0:y1, x0:x1].astype(np.float32)
    shaded = np.where(mask[y0:y1, x0:x1, None], np.clip(region * factor, 0, 255), region).astype(np.uint8)
    canvas.rgb.paste(Image.fromarray(shaded), (int(x0), int(y0)))


def _draw_creases(canvas: _Canvas, identity: Identity, points: np.ndarray, s: dict[str, float]) -> None:
    """Wrinkles and folds whose darkness follows an AU's intensity."""
    skin, b = identity.skin, identity.brow_height
    for k in range(3):  # AU1: forehead, middle; AU2: forehead, sides
        y = b - 0.2 - 0.09 * k
        canvas.line(_arc(-0.28, 0.28, y, 0.03), _rgba(skin, 0.55, 0.6 * s["AU1"] / 5), 0.014)
        for side in (-1, 1):
            canvas.line(
                _arc(side * 0.3, side * 0.7, y + 0.02, 0.02), _rgba(skin, 0.55, 0.6 * s["AU2"] / 5), 0.014
            )
    for side in (-1, 1):  # AU4: vertical furrows between the brows
        canvas.line(
            np.array([[side * 0.06, b - 0.02], [side * 0.045, b + 0.17]]),
            _rgba(skin, 0.5, 0.7 * s["AU4"] / 5),
            0.016,
        )
    for side, corner in ((-1, points[36]), (1, points[45])):  # AU6: crow's feet and the lower-lid bag
        for angle in (-0.45, 0.0, 0.45):
            end = corner + np.array([side * 0.13 * np.cos(angle), 0.13 * np.sin(angle)])
            canvas.line(
                np.array([corner + np.array([side * 0.03, 0]), end]),
                _rgba(skin, 0.55, 0.7 * s["AU6"] / 5),
                0.012,
            )
        cx = side * identity.eye_spacing
        canvas.line(
            _arc(cx - 0.12, cx + 0.12, 0.12 - 0.01 * s["AU6"], -0.03),
            _rgba(skin, 0.6, 0.6 * s["AU6"] / 5),
            0.012,
        )
    for k in range(3):  # AU9: wrinkles across the bridge of the nose
        canvas.line(_arc(-0.11, 0.11, 0.08 + 0.06 * k, 0.015), _rgba(skin, 0.5, 0.75 * s["AU9"] / 5), 0.014)
    for side, ala, corner in ((-1, points[31], points[48]), (1, points[35], points[54])):
        fold = np.array(
            [
                ala + np.array([side * 0.04, -0.03]),
                ala + np.array([side * 0.16, 0.12]),
                corner + np.array([side * 0.07, 0.02]),
            ]
        )
        canvas.line(_smooth(fold), _rgba(skin, 0.6, 0.15 + 0.6 * s["AU12"] / 5), 0.016)  # nasolabial folds
        drop = np.array([corner + np.array([side * 0.02, 0.02]), corner + np.array([side * 0.05, 0.22])])
        canvas.line(drop, _rgba(skin, 0.55, 0.7 * s["AU15"] / 5), 0.014)  # AU15: lines down from the corners
        stretch = np.stack([corner + np.array([side * 0.05, dy]) for dy in (-0.03, 0.0, 0.03)])
        for start in stretch:  # AU20: skin bunched beside the stretched corners
            line = np.stack([start, start + np.array([side * 0.07, 0.0])])
            canvas.line(line, _rgba(skin, 0.6, 0.6 * s["AU20"] / 5), 0.012)
    chin_top = points[57, 1] + 0.08
    canvas.line(_arc(-0.14, 0.14, chin_top, -0.03), _rgba(skin, 0.6, 0.2 + 0.5 * s["AU17"] / 5), 0.016)
    dimples = np.random.default_rng(identity.hair_seed + 1).uniform([-0.13, 0.05], [0.13, 0.2], (8, 2))
    for dx, dy in dimples:  # AU17: the chin boss puckers
        dot = _ellipse(dx, chin_top + dy, 0.015, 0.012, 8)
        canvas.fill(dot, _rgba(skin, 0.6, 0.7 * s["AU17"] / 5), person=False)


def _paint_inside(canvas: _Canvas, outline: np.ndarray, base, shapes) -> None:
    """Fills `outline` with `base`, then paints `shapes` [(polygon, colour)] clipped to it (face units)."""
    xy = canvas.px(outline)
    x0, y0 = (int(np.floor(min(p[i] for p in xy))) - 2 for i in (0, 1))
    x1, y1 = (int(np.ceil(max(p[i] for p in xy))) + 2 for i in (0, 1))
    crop = canvas.rgb.crop((x0, y0, x1, y1))
    layer = Image.new("RGB", crop.size, base)
    draw = ImageDraw.Draw(layer)
    for polygon, color in shapes:
        draw.polygon([(x - x0, y - y0) for x, y in canvas.px(polygon)], fill=color)
    mask = Image.new("L", crop.size)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in xy], fill=255)
    canvas.rgb.paste(Image.composite(layer, crop, mask), (x0, y0))


def _draw_eyes(canvas: _Canvas, identity: Identity, aus: np.ndarray) -> None:
    for side in (-1.0, 1.0):
        upper, lower = geo.eye_lids(identity, aus, side, 9)
        opening = _smooth(np.concatenate([upper, lower[::-1][1:-1]]), closed=True, per_segment=4)
        center = np.array([side * identity.eye_spacing, 0.005])
        iris = 1.1 * identity.eye_open
        eye_color = tuple(int(c) for c in identity.eye_color)
        shapes = [
            (_ellipse(*center, iris, iris, 20), eye_color),
            (_ellipse(*center, 0.45 * iris, 0.45 * iris, 16), (15, 12, 12)),
            (_ellipse(*(center + np.array([0.02, -0.02])), 0.012, 0.012, 8), (250, 250, 250)),
        ]
        _paint_inside(canvas, opening, _SCLERA, shapes)
        lid = _smooth(upper, per_segment=4)
        canvas.line(lid, _rgba((30, 22, 20), 1.0, 0.95), 0.02)
        canvas.line(lid + np.array([0, -0.045]), _rgba(identity.skin, 0.65, 0.55), 0.012)  # the lid crease
        canvas.line(_smooth(lower, per_segment=4), _rgba(identity.skin, 0.6, 0.7), 0.01)


def _draw_brows(canvas: _Canvas, identity: Identity, points: np.ndarray) -> None:
    color = _shade(identity.hair_color, 0.75)
    for brow in (points[geo.RIGHT_BROW], points[geo.LEFT_BROW][::-1]):  # both from outer to inner
        half = identity.brow_thickness * np.linspace(0.3, 0.55, 5)[:, None] * np.array([0, 1])
        outline = np.concatenate(
            [_smooth(brow - half, per_segment=4), _smooth(brow + half, per_segment=4)[::-1]]
        )
        canvas.fill(outline, color, person=False)


def _draw_nose(canvas: _Canvas, identity: Identity, points: np.ndarray) -> None:
    skin = identity.skin
    shadow_side = 1.0 if canvas.pose.yaw < 0 else -1.0
    bridge = points[27:31] + np.array([shadow_side * 0.6 * identity.nose_width, 0])
    canvas.line(_smooth(bridge), _rgba(skin, 0.7, 0.35), 0.02)
    canvas.line(_smooth(points[31:36]), _rgba(skin, 0.55, 0.6), 0.014)
    for a, b in ((31, 32), (35, 34)):
        center = 0.5 * (points[a] + points[b]) + np.array([0, -0.02])
        canvas.fill(_ellipse(*center, 0.035, 0.018, 12), _rgba((40, 25, 25), 1.0, 0.85), person=False)
        wing = np.array(
            [points[a], points[a] + [0.3 * (points[a, 0] - points[b, 0]), -0.08], points[30] - [0, 0.06]]
        )
        canvas.line(_smooth(wing), _rgba(skin, 0.65, 0.4), 0.012)
    canvas.fill(
        _ellipse(*(points[30] + np.array([0.0, -0.02])), 0.04, 0.03, 12), _rgba(skin, 1.12, 0.6), person=False
    )


def _draw_mouth(canvas: _Canvas, identity: Identity, points: np.ndarray) -> None:
    outer, inner = points[geo.OUTER_LIPS], points[geo.INNER_LIPS]
    inner_upper = np.concatenate([outer[:1], inner[0:5], outer[6:7]])  # corner, 60–64, corner
    inner_lower = np.concatenate([outer[6:7], inner[4:5], inner[5:8], inner[0:1], outer[:1]])  # corner, 64–60
    top = _smooth(inner_upper)
    bottom = _smooth(inner_lower)
    teeth = np.concatenate([top, top[::-1] + np.array([0, 0.045])])
    _paint_inside(canvas, np.concatenate([top, bottom]), _MOUTH, [(teeth, _TEETH)])
    lip = _shade(identity.lip_color, 1.0)
    lower_outer = np.concatenate([outer[6:12], outer[:1]])
    canvas.fill(
        np.concatenate([_smooth(lower_outer), bottom[::-1]]), _shade(identity.lip_color, 1.05), person=False
    )
    canvas.fill(np.concatenate([_smooth(outer[0:7]), top[::-1]]), lip, person=False)
    canvas.line(top, _rgba(_MOUTH, 1.0, 0.8), 0.01)


def _draw_hair_front(canvas: _Canvas, identity: Identity) -> None:
    style = HAIR_STYLES[identity.hair_style]
    hairline = {"bangs": 0.68, "buzz": 0.95}.get(style, 0.88)
    volume = {"buzz": 0.02, "curly": 0.2, "long": 0.12}.get(style, 0.1)
    color = identity.hair_color
    if style == "buzz":
        color = tuple(0.5 * h + 0.5 * s for h, s in zip(identity.hair_color, identity.skin, strict=True))
    cap = _hair_cap(identity, hairline, volume)
    canvas.fill(cap, _shade(color, 1.0))
    canvas.draw_face.polygon(canvas.px(cap), fill=0)
    rng = np.random.default_rng(identity.hair_seed)
    for _ in range(6):  # a few strands
        x = rng.uniform(-0.6, 0.6)
        strand = np.array(
            [[x, -identity.head_top - 0.05], [x * 1.2, -identity.head_top * 0.75], [x * 1.35, -hairline]]
        )
        canvas.line(_smooth(strand), _rgba(color, 0.75, 0.6), 0.012)


def render_face(
    identity: Identity, pose: Pose, aus: np.ndarray, scene: np.ndarray, supersample: int | None = None
) -> RenderedFace:
    """The face of `identity` in `pose` showing AU intensities `aus` (12,) over `scene` uint8 (S, S, 3)."""
    size = scene.shape[0]
    if scene.shape != (size, size, 3) or scene.dtype != np.uint8:
        raise ValueError(f"the scene must be uint8 (S, S, 3), got {scene.dtype} {scene.shape}")
    supersample = supersample or (4 if size <= 128 else 2)
    s = geo.au_intensities(aus)
    points = geo.landmarks(identity, aus)
    canvas = _Canvas(size, supersample, pose)
    _draw_body(canvas, identity)
    outline = geo.face_outline(identity, aus)
    canvas.fill(outline, _shade(identity.skin, 1.0))
    canvas.draw_face.polygon(canvas.px(outline), fill=255)
    _shade_face(canvas, identity, s)
    _draw_creases(canvas, identity, points, s)
    _draw_eyes(canvas, identity, aus)
    _draw_brows(canvas, identity, points)
    _draw_nose(canvas, identity, points)
    _draw_mouth(canvas, identity, points)
    _draw_hair_front(canvas, identity)

    coverage = np.asarray(canvas.alpha) > 0
    colour = np.asarray(canvas.rgb) * coverage[..., None]  # premultiplied: black where nothing is drawn
    colour = np.asarray(Image.fromarray(colour.astype(np.uint8)).reduce(supersample), np.float32)
    alpha = np.asarray(Image.fromarray(coverage.astype(np.uint8) * 255).reduce(supersample), np.float32) / 255
    image = np.clip(scene * (1 - alpha[..., None]) + colour, 0, 255).round().astype(np.uint8)
    face = np.asarray(canvas.face.reduce(supersample)) >= 128
    pixels = geo.project(points, geo.landmark_depth(points), pose, size)
    return RenderedFace(image, face, alpha > 0, pixels.astype(np.float32))
