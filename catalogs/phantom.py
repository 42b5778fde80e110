"""Analytic joint phantoms: tissue intensity and structure label at any world point.

Coordinates are millimetres in a patient frame centred on the joint: x left to right
(medial knee compartment at negative x), y posterior to anterior, z inferior to superior.
Anatomy is a set of simple solids (ellipsoids, tubes, slabs); each abnormality is a small
local change where a radiologist would look for it, never a global intensity shift:

- ACL / PCL: a fluid-bright gap in the middle of the ligament (long axis in the sagittal
  plane, so sagittal slices show it best);
- MM / LM: a bright horizontal cleft through the posterior horn of the meniscus;
- MCL / LCL: a thickened, oedematous collateral ligament (runs cranio-caudally beside the
  joint: coronal);
- PD: the patella displaced laterally (axial);
- EFFU: a distended suprapatellar recess.

Ankle and shoulder phantoms are simpler and carry no segmentation structures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# PD-weighted-like tissue intensities before vendor contrast, bias field and noise.
TISSUE = {
    "air": 0.0, "soft": 0.35, "fat": 0.75, "marrow": 0.5, "cartilage": 0.68, "meniscus": 0.08,
    "ligament": 0.13, "tendon": 0.1, "fluid": 0.95, "oedema": 0.62,
}
TISSUE_NAMES = list(TISSUE)


@dataclass(frozen=True)
class Anatomy:
    """Per-patient variation: size, in-plane rotation about z, offset (mm)."""

    scale: float
    angle: float
    shift: tuple[float, float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Anatomy:
        return cls(float(rng.uniform(0.92, 1.08)), float(rng.uniform(-0.08, 0.08)), tuple(rng.uniform(-3, 3, 3)))

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        """World points (n, 3) -> the phantom's canonical frame."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        p = points - np.asarray(self.shift)
        x, y = c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1]
        return np.stack([x, y, p[:, 2]], axis=1) / self.scale


class Canvas:
    """Tissue and label maps over a set of points, painted solid by solid (last wins)."""

    def __init__(self, points: np.ndarray):
        self.x, self.y, self.z = points[:, 0], points[:, 1], points[:, 2]
        self.tissue = np.zeros(len(points), np.int8)
        self.label = np.zeros(len(points), np.uint8)

    def paint(self, where: np.ndarray, tissue: str, label: int | None = None) -> None:
        self.tissue[where] = TISSUE_NAMES.index(tissue)
        if label is not None:
            self.label[where] = label

    def ellipsoid(self, centre, radii, grow: float = 0.0) -> np.ndarray:
        """Squared normalised radius (<= 1 inside); `grow` mm enlarges every radius."""
        (cx, cy, cz), (rx, ry, rz) = centre, radii
        return ((self.x - cx) / (rx + grow)) ** 2 + ((self.y - cy) / (ry + grow)) ** 2 + ((self.z - cz) / (rz + grow)) ** 2

    def tube(self, start, end, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(inside, position along the axis in [0, 1]) for a capsule from `start` to `end`."""
        a, d = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
        px, py, pz = self.x - a[0], self.y - a[1], self.z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / (d @ d), 0.0, 1.0)
        dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
        return dist2 <= radius**2, t

    def limb(self, radius: float) -> None:
        """Soft tissue with a subcutaneous fat ring around the joint."""
        r2 = self.x**2 + self.y**2
        self.paint(r2 <= radius**2, "fat")
        self.paint(r2 <= (radius - 7) ** 2, "soft")

    def intensities(self) -> np.ndarray:
        return np.asarray(list(TISSUE.values()), np.float32)[self.tissue]


def _ligament(canvas: Canvas, start, end, radius: float, label: int | None, torn: bool) -> None:
    inside, t = canvas.tube(start, end, radius)
    canvas.paint(inside, "ligament", label)
    if torn:  # a fluid-filled gap in the middle third, fibres retracted
        gap = inside & (t > 0.4) & (t < 0.62)
        canvas.paint(gap, "fluid", 0)


def knee(canvas: Canvas, labels: dict[str, int]) -> None:
    """Paint the knee phantom; structure values follow `structures.toml`."""
    c = canvas
    c.limb(68)
    # Suprapatellar recess: a thin fluid pocket, distended with effusion.
    recess = c.ellipsoid((0, 20, 42), (20, 4, 12) if not labels.get("EFFU") else (27, 9, 17))
    c.paint(recess <= 1, "fluid")
    # Femur: shaft and two condyles, wrapped in femoral cartilage (4).
    condyles = np.minimum(c.ellipsoid((-17, -2, 12), (15, 23, 13)), c.ellipsoid((17, -2, 12), (15, 23, 13)))
    shaft = (c.x**2 + (c.y + 2) ** 2 <= 14**2) & (c.z > 16)
    cartilage = np.minimum(
        c.ellipsoid((-17, -2, 12), (15, 23, 13), grow=2.5), c.ellipsoid((17, -2, 12), (15, 23, 13), grow=2.5)
    )
    c.paint((cartilage <= 1) & (c.z < 18), "cartilage", 4)
    c.paint((condyles <= 1) | shaft, "marrow", 1)
    # Tibia (2) below the joint line, with medial (5) and lateral (6) plateau cartilage.
    plateau = (c.x / 36) ** 2 + ((c.y + 2) / 26) ** 2 <= 1
    c.paint(plateau & (c.z < -4) & ((c.z > -22) | (c.x**2 + (c.y + 2) ** 2 <= 16**2)), "marrow", 2)
    slab = plateau & (c.z >= -4) & (c.z < -1.5)
    c.paint(slab & (c.x < -3), "cartilage", 5)
    c.paint(slab & (c.x > 3), "cartilage", 6)
    # Menisci (8 medial, 9 lateral): wedges on the rim of each plateau.
    for side, label, abbr in ((-1, 8, "MM"), (1, 9, "LM")):
        r = np.hypot(c.x - side * 17, (c.y + 2) / 1.25)
        wedge = (r >= 10) & (r <= 17) & (np.abs(c.z + 1.0) <= 3.2 - 0.25 * (17 - r))
        c.paint(wedge, "meniscus", label)
        if labels.get(abbr):  # horizontal cleft through the posterior horn
            c.paint(wedge & (c.y < -6) & (np.abs(c.z + 1.0) < 0.8), "fluid", 0)
    # Cruciates (10 ACL, 11 PCL) in the intercondylar notch.
    _ligament(c, (7, -12, 12), (-3, 9, -3), 3.2, 10, bool(labels.get("ACL")))
    _ligament(c, (-6, -2, 15), (0, -20, -8), 3.6, 11, bool(labels.get("PCL")))
    # Collaterals (not segmented): thickened and oedematous when injured.
    for x, abbr in ((-33, "MCL"), (33, "LCL")):
        injured = bool(labels.get(abbr))
        inside, _ = c.tube((x, -4, 26), (x * 1.03, -6, -26), 4.2 if injured else 2.2)
        c.paint(inside, "oedema" if injured else "ligament")
    # Patella (3) with its posterior cartilage (7); displaced laterally in PD.
    px = 14.0 if labels.get("PD") else 0.0
    patella = c.ellipsoid((px, 27, 22), (19, 8, 17))
    c.paint((c.ellipsoid((px, 27, 22), (19, 8, 17), grow=2.5) <= 1) & (c.y < 27), "cartilage", 7)
    c.paint(patella <= 1, "marrow", 3)

def ankle(canvas: Canvas, labels: dict[str, int]) -> None:
    c = canvas
    c.limb(55)
    c.paint((c.x**2 + (c.y - 2) ** 2 <= 14**2) & (c.z > 6), "marrow")  # tibia
    c.paint(((c.x - 20) ** 2 + (c.y + 6) ** 2 <= 6**2) & (c.z > -8), "marrow")  # fibula
    talus = c.ellipsoid((0, 2, -6), (17, 20, 11))
    c.paint(talus <= 1, "marrow")
    c.paint(c.ellipsoid((0, -14, -26), (15, 26, 12)) <= 1, "marrow")  # calcaneus
    if labels.get("OLT"):  # bright osteochondral defect on the medial talar dome
        c.paint(c.ellipsoid((-7, 4, 3.5), (4, 4, 3)) <= 1, "fluid")
    _ligament(c, (21, 0, -8), (9, 16, -6), 2.2, None, bool(labels.get("ATFL")))
    _ligament(c, (21, -6, -10), (14, -14, -26), 2.2, None, bool(labels.get("CFL")))
    _ligament(c, (0, -34, 40), (0, -33, -22), 4.5, None, bool(labels.get("ATR")))


def shoulder(canvas: Canvas, labels: dict[str, int]) -> None:
    c = canvas
    c.limb(70)
    head = c.ellipsoid((0, 0, 0), (24, 24, 24))
    c.paint(head <= 1.55, "soft")
    if labels.get("SASD"):  # fluid in the subacromial-subdeltoid bursa
        c.paint((head <= 1.75) & (head > 1.5) & (c.z > 16) & (np.abs(c.y) < 14), "fluid")
    rim = (head > 1) & (head <= 1.4)
    for abbr, where, defect in (
        ("SSP", (c.z > 12) & (np.abs(c.y) < 11), (8, 0, 25)),
        ("ISP", (c.y < -10) & (c.z > -6) & (c.z < 14), (4, -25, 6)),
        ("SSC", (c.y > 10) & (c.x < -4) & (c.z > -10) & (c.z < 10), (-8, 24, 0)),
    ):
        c.paint(rim & where, "tendon")
        if labels.get(abbr):  # a small full-thickness defect
            c.paint(rim & where & (c.ellipsoid(defect, (6, 6, 6)) <= 1), "fluid")
    c.paint(head <= 1, "marrow")
    c.paint(c.ellipsoid((-30, 0, 0), (6, 14, 18)) <= 1, "marrow")  # glenoid
    c.paint((np.abs(c.z - 36) < 4) & (c.x > -30) & (c.x < 20) & (np.abs(c.y) < 16), "marrow")  # acromion
    if labels.get("AC"):  # thickened, oedematous inferior capsule
        c.paint((head > 1.1) & (head <= 1.5) & (c.z < -14), "oedema")
    if labels.get("LHBT_EFFU"):
        c.paint(c.tube((6, 27, 20), (6, 27, -30), 5.5)[0], "fluid")
    _ligament(c, (6, 27, 20), (6, 27, -30), 2.5, None, bool(labels.get("LHBT")))


PHANTOMS = {"knee": knee, "ankle": ankle, "shoulder": shoulder}


def render(joint: str, anatomy: Anatomy, labels: dict[str, int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intensity float32, structure label uint8) of `joint` at world `points` (n, 3)."""
    canvas = Canvas(anatomy.to_patient(points))
    PHANTOMS[joint](canvas, labels)
    return canvas.intensities(), canvas.label
