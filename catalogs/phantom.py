"""Analytic joint phantoms: tissue, structure label and T2 on any regular grid.

Coordinates are millimetres in a patient frame centred on the knee joint: x left to right
(medial compartment at negative x), y posterior to anterior, z inferior to superior; the
joint line is near z = 0. Bones are approximate signed-distance solids (ellipsoids, elliptic
cones and height fields joined by smooth minima), so cartilage is a shell of a given local
thickness over the bone surface, and the femur, patella and tibia move rigidly (flexion,
varus/valgus) in their own frames. Each structure paints only the grid sub-box its bounding
box covers, which is what keeps a 3D phantom cheap enough to image hundreds of exams.

Tissues carry proton density, T1, T2 and fat fraction; `synth.mr_signal` turns them into a
spin-echo signal for a protocol (TE, TR, flip angle, fat suppression). Lesions are local and
where a radiologist looks for them:

- ACL / PCL: a fluid-filled discontinuity in the middle of the band with oedema around it
  (ACL tears often with bone bruises of the lateral femoral condyle and posterolateral tibia);
- MM / LM: an oblique linear high signal through the posterior horn reaching the inferior
  articular surface, in larger tears with a lost free edge and a parameniscal cyst; healthy
  menisci may carry intrasubstance (mucoid) signal that reaches no surface;
- MCL / LCL: a thickened ligament of intermediate signal in a cuff of oedema;
- PD: the patella shifted and tilted laterally, with kissing bruises (medial patellar facet,
  lateral femoral condyle) and medial retinacular oedema;
- EFFU: distended suprapatellar and posterior recesses. Every knee has some joint fluid;
  its amount (`Anatomy.fluid`) overlaps between knees with and without an effusion.

How far each lesion shows is drawn per subject (`Anatomy.fluid`, `meniscus`, `tendon`), so a
label is a graded finding, as in a real cohort, not an on/off switch a network reads at a glance.

Cartilage degeneration (per compartment, more likely beside a torn meniscus) thins the
cartilage, raises its T2 and, when advanced, opens a focal defect.

The ankle and the shoulder are built the same way in frames centred on the talar dome and
the humeral head (same axes); their lesions are listed in `ankle` and `shoulder`. The
lumbar spine (`spine`) and the thigh (`thigh`) are simple solids whose biomarkers are known
exactly (`true_biomarkers`): disc heights, and muscle, bone and fat volumes of a prism.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# name: (proton density, T1 ms, T2 ms, fat fraction)
TISSUES = {
    "air": (0.0, 1000.0, 1.0, 0.0),
    "skin": (0.75, 700.0, 35.0, 0.0),
    "fat": (0.95, 280.0, 75.0, 1.0),
    "muscle": (0.6, 900.0, 32.0, 0.0),
    "capsule": (0.8, 1000.0, 40.0, 0.0),
    "vessel": (0.12, 1500.0, 50.0, 0.0),
    "cortex": (0.08, 1000.0, 1.5, 0.0),
    "marrow": (0.9, 320.0, 60.0, 0.85),
    "bruise": (0.95, 1100.0, 70.0, 0.35),
    "cartilage": (0.85, 1050.0, 38.0, 0.0),
    "meniscus": (0.45, 800.0, 9.0, 0.0),
    "ligament": (0.5, 900.0, 16.0, 0.0),
    "sprain": (0.7, 1100.0, 45.0, 0.0),
    "tendon": (0.4, 800.0, 6.0, 0.0),
    "fluid": (1.0, 2500.0, 400.0, 0.0),
    "oedema": (0.95, 1500.0, 90.0, 0.1),
    "mucoid": (0.65, 1000.0, 28.0, 0.0),  # intrasubstance degeneration of a meniscus or tendon
    "disc": (0.85, 1200.0, 110.0, 0.0),  # intervertebral disc (nucleus-dominated: bright on T2, dark on T1)
}
TISSUE_NAMES = list(TISSUES)
TISSUE_TABLE = np.asarray(list(TISSUES.values()), np.float32)  # (tissues, 4)
CARTILAGE_T2 = 38.0  # ms, mid-depth of healthy cartilage; deep layers lower, superficial higher


@dataclass(frozen=True)
class Anatomy:
    """One subject: body size and proportions, pose, tissue variation, all drawn from a seed."""

    scale: float = 1.0  # overall size
    width: float = 1.0  # medio-lateral proportion
    angle: float = 0.0  # rotation about z (rad)
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mm
    flexion: float = 8.0  # degrees
    varus: float = 0.0  # degrees, negative for valgus
    fat: float = 8.0  # subcutaneous fat (mm)
    cartilage: float = 1.0  # cartilage thickness factor
    cartilage_t2: float = CARTILAGE_T2  # ms
    degeneration: tuple[float, float] = (0.0, 0.0)  # medial, lateral compartment, 0..1
    bruise: float = 1.0  # < 0.6: bone bruises come with an ACL tear
    texture: int = 0  # seed of the trabecular pattern
    # How lesions show, 0..1, drawn after the fields above so those keep their values per seed.
    fluid: float = 0.25  # joint fluid: 0 a film, 1 a tense effusion (healthy knees low, effusions high, overlapping)
    meniscus: tuple[float, float] = (0.5, 0.5)  # medial, lateral: extent of a tear, or a healthy meniscus's mucoid degeneration
    tendon: float = 0.5  # Achilles: extent of a rupture, or a healthy tendon's tendinopathy

    @classmethod
    def draw(cls, rng: np.random.Generator, labels: dict | None = None) -> Anatomy:
        labels = labels or {}
        degeneration = tuple(
            float(np.clip(rng.beta(1.2, 4.0) + (0.25 if labels.get(abbr) else 0.0), 0, 1)) for abbr in ("MM", "LM")
        )
        body = dict(
            scale=float(rng.uniform(0.9, 1.1)), width=float(rng.uniform(0.93, 1.07)),
            angle=float(rng.uniform(-0.08, 0.08)), shift=tuple(float(v) for v in rng.uniform(-3, 3, 3)),
            flexion=float(rng.uniform(0, 20)), varus=float(rng.normal(0, 2.5)), fat=float(rng.uniform(4, 14)),
            cartilage=float(rng.uniform(0.85, 1.15)), cartilage_t2=float(rng.normal(CARTILAGE_T2, 2.5)),
            degeneration=degeneration, bruise=float(rng.random()), texture=int(rng.integers(2**31)),
        )
        # Joint fluid overlaps between the classes: an ideal reader of the fluid amount alone
        # ranks an effusion above a healthy knee about 91% of the time (AUROC 0.909 on the
        # study's 400 exams), the ceiling of the effusion task.
        fluid = 0.2 + 0.8 * rng.beta(2, 2) if labels.get("EFFU") else 0.8 * rng.beta(2, 4)
        return cls(**body, fluid=float(fluid), meniscus=(float(rng.random()), float(rng.random())),
                   tendon=float(rng.random()))

    def world_to_patient(self) -> np.ndarray:
        """4x4: world mm -> the phantom's canonical patient frame."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rotate = np.array([[c, s, 0, 0], [-s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        shift = np.eye(4)
        shift[:3, 3] = -np.asarray(self.shift)
        return np.diag([1 / (self.scale * self.width), 1 / self.scale, 1 / self.scale, 1]) @ rotate @ shift


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    out = np.eye(4)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


def _about(rotation: np.ndarray, origin) -> np.ndarray:
    """4x4 taking patient points into the frame of a bone rotated by `rotation` about `origin`."""
    to, back = np.eye(4), np.eye(4)
    to[:3, 3], back[:3, 3] = -np.asarray(origin, float), np.asarray(origin, float)
    return back @ rotation.T @ to


def _apply(matrix: np.ndarray, point) -> np.ndarray:
    return matrix[:3, :3] @ np.asarray(point, float) + matrix[:3, 3]


class Volume:
    """Tissue, structure label, T2 and proton-density modulation on a regular grid.

    `index_to_patient` maps array indices (i column, j row, k slice; arrays are (k, j, i)) to
    patient millimetres. Structures paint sub-boxes (`region`), last painter wins.
    """

    def __init__(self, shape: tuple[int, int, int], index_to_patient: np.ndarray):
        self.shape, self.matrix = tuple(shape), np.asarray(index_to_patient, float)
        self.tissue = np.zeros(shape, np.int8)
        self.label = np.zeros(shape, np.uint8)
        self.t2 = np.full(shape, TISSUES["air"][2], np.float32)
        self.pd = np.ones(shape, np.float32)
        self.cartilage: dict[int, list[float]] = {}  # label -> [voxels, sum of 1 / local thickness]

    def region(self, lo, hi, frame: np.ndarray | None = None) -> Region:
        """The grid points whose coordinates in `frame` (4x4 from patient mm) may lie in the
        box (possibly none)."""
        to_frame = self.matrix if frame is None else frame @ self.matrix
        inverse = np.linalg.inv(to_frame)
        corners = np.array(list(itertools.product(*zip(lo, hi))), float)
        index = corners @ inverse[:3, :3].T + inverse[:3, 3]
        first = np.maximum(np.floor(index.min(0)).astype(int), 0)
        last = np.maximum(np.minimum(np.ceil(index.max(0)).astype(int) + 1, self.shape[::-1]), first)
        i, j, k = (np.arange(a, b, dtype=np.float32) for a, b in zip(first, last))
        m = to_frame.astype(np.float32)
        x, y, z = (m[r, 0] * i + m[r, 1] * j[:, None] + m[r, 2] * k[:, None, None] + m[r, 3] for r in range(3))
        box = tuple(slice(a, b) for a, b in zip(first[::-1], last[::-1]))
        return Region(self, box, x, y, z)


class Region:
    """A sub-box of a volume with the coordinates of its points in one frame."""

    def __init__(self, volume: Volume, box: tuple[slice, ...], x, y, z):
        self.volume, self.box, self.x, self.y, self.z = volume, box, x, y, z

    def paint(self, where: np.ndarray, tissue: str, label: int | None = None, t2=None, pd=None) -> None:
        v, b = self.volume, self.box
        v.tissue[b][where] = TISSUE_NAMES.index(tissue)
        v.t2[b][where] = TISSUES[tissue][2] if t2 is None else (t2[where] if np.ndim(t2) else t2)
        v.pd[b][where] = 1.0 if pd is None else pd[where]
        if label is not None:
            v.label[b][where] = label

    def ellipsoid(self, centre, radii, grow: float = 0.0) -> np.ndarray:
        """Squared normalised radius (<= 1 inside); `grow` mm enlarges every radius."""
        (cx, cy, cz), (rx, ry, rz) = centre, radii
        return ((self.x - cx) / (rx + grow)) ** 2 + ((self.y - cy) / (ry + grow)) ** 2 + ((self.z - cz) / (rz + grow)) ** 2

    def ellipsoid_distance(self, centre, radii) -> np.ndarray:
        """Approximate signed distance (mm) to an ellipsoid's surface, negative inside."""
        p = [(c - float(o)) for c, o in zip((self.x, self.y, self.z), centre)]
        radii = [float(r) for r in radii]
        k0 = np.sqrt(sum((q / r) ** 2 for q, r in zip(p, radii)))
        k1 = np.sqrt(sum((q / (r * r)) ** 2 for q, r in zip(p, radii))) + 1e-6
        return k0 * (k0 - 1) / k1

    def band(self, start, end, width: float, thickness: float, across=(1.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """(normalised cross-section radius, position along the axis in [0, 1]) for a band of
        elliptic cross-section from `start` to `end`; `width` (semi-axis, mm) lies along the
        part of `across` perpendicular to the axis."""
        a, d = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
        axis = d / np.linalg.norm(d)
        u = np.asarray(across, float) - axis * (axis @ np.asarray(across, float))
        u /= np.linalg.norm(u)
        # Python floats, so that float32 coordinates stay float32.
        w, u, length2 = np.cross(axis, u).tolist(), u.tolist(), float(d @ d)
        a, d = a.tolist(), d.tolist()
        px, py, pz = self.x - a[0], self.y - a[1], self.z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
        rx, ry, rz = px - t * d[0], py - t * d[1], pz - t * d[2]
        radius = ((rx * u[0] + ry * u[1] + rz * u[2]) / width) ** 2 + ((rx * w[0] + ry * w[1] + rz * w[2]) / thickness) ** 2
        return radius, t

    def tube(self, start, end, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(inside, position along the axis in [0, 1]) for a capsule from `start` to `end`."""
        r, t = self.band(start, end, radius, radius)
        return r <= 1, t

    def limb(self, radius: float, fat: float = 7.0, centre_y: float = 0.0, ry: float | None = None) -> None:
        """Skin, subcutaneous fat and muscle of an elliptic limb cross-section."""
        ry = ry or radius
        rho = np.sqrt((self.x / radius) ** 2 + ((self.y - centre_y) / ry) ** 2)
        depth = (1 - rho) * min(radius, ry)
        self.paint(depth > 0, "skin")
        self.paint(depth > 1.5, "fat")
        self.paint(depth > 1.5 + fat, "muscle")


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum of two distances (blend radius `k` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1 - h)


def _smoothstep(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3 - 2 * v)


def _trabecular(region: Region, where: np.ndarray, seed: int) -> np.ndarray:
    """Proton-density modulation of marrow at `where`: a mesh of thin dark trabeculae
    (about 2 mm apart); 1 elsewhere."""
    rng = np.random.default_rng(seed)
    waves = rng.normal(size=(4, 3))
    waves *= (2 * np.pi / rng.uniform(1.8, 3.0, 4) / np.linalg.norm(waves, axis=1))[:, None]
    x, y, z = region.x[where], region.y[where], region.z[where]
    s = sum(np.cos(f[0] * x + f[1] * y + f[2] * z + p) for f, p in zip(waves.tolist(), rng.uniform(0, 6.3, 4).tolist()))
    out = np.ones(where.shape, np.float32)
    out[where] = 1 - 0.22 * np.exp(-(s * s) * 3.0)
    return out


def _bone(r: Region, distance: np.ndarray, label: int | None, seed: int, cortex: float | np.ndarray = 1.2) -> None:
    r.paint(distance <= 0, "cortex", label)
    marrow = distance <= -cortex
    r.paint(marrow, "marrow", label, pd=_trabecular(r, marrow, seed))


def _cartilage(r: Region, distance, thickness, label: int | None, a: Anatomy, degeneration) -> None:
    """A shell of local `thickness` (mm) over a bone surface; T2 rises from the deep layer
    (near bone) to the surface and with `degeneration`. Records the area-weighted thickness:
    a shell voxel stands for area / thickness, so the harmonic mean over voxels is the mean
    thickness over the surface."""
    inside = (distance > 0) & (distance <= thickness) & (thickness > 0.3)
    depth = distance / np.maximum(thickness, 1e-3)
    t2 = a.cartilage_t2 - 7 + 14 * depth + 14 * degeneration
    r.paint(inside, "cartilage", label, t2=t2)
    if label is None:  # not a segmented compartment: no true thickness
        return
    count, inverse = r.volume.cartilage.setdefault(label, [0, 0.0]), (1.0 / thickness[inside]).sum()
    count[0] += int(inside.sum())
    count[1] += float(inverse)


# --- the knee --------------------------------------------------------------------------

FLEXION_CENTRE = (0.0, -6.0, 21.0)  # femoral frame origin of flexion: the condyles' centre
CONDYLES = {-1: ((-21.0, -6.0, 21.5), (14.0, 25.0, 20.0)), 1: ((21.0, -5.0, 23.0), (13.0, 24.0, 19.5))}
PLATEAUS = {-1: ((-21.0, -1.0), (16.0, 22.0)), 1: ((21.0, -2.0), (15.0, 20.0))}  # centre, semi-axes (x, y)


def femur_frame(a: Anatomy) -> np.ndarray:
    return _about(_rotation(0, a.flexion) @ _rotation(1, a.varus), FLEXION_CENTRE)


def patella_frame(a: Anatomy, dislocated: bool) -> np.ndarray:
    frame = femur_frame(a)
    if dislocated:  # shifted 14 mm laterally and tilted, in the femoral frame
        shift = np.eye(4)
        shift[0, 3] = -14.0
        frame = _about(_rotation(1, -15.0), (0.0, 36.0, 26.0)) @ shift @ frame
    return frame


def _femur_distance(r: Region) -> np.ndarray:
    x, y, z = r.x, r.y, r.z
    d = _smin(r.ellipsoid_distance(*CONDYLES[-1]), r.ellipsoid_distance(*CONDYLES[1]), 3.0)
    groove = 4.5 * np.exp(-((x / 12) ** 2)) * _smoothstep((y - 6) / 8)
    trochlea = np.maximum(r.ellipsoid_distance((0.0, 4.0, 27.0), (33.0, 20.0, 19.0)) + groove, 2.0 - y)
    d = _smin(d, trochlea, 4.0)
    fade = np.exp(-np.maximum(z - 24, 0) / 16)
    a, b, yc = 15 + 21 * fade, 14 + 10 * fade, 1 - 5 * fade
    shaft = (np.sqrt((x / a) ** 2 + ((y - yc) / b) ** 2) - 1) * np.minimum(a, b)
    return _smin(d, np.maximum(shaft, 24 - z), 6.0)


def _tibia_top(x, y) -> np.ndarray:
    """Height (mm) of the tibial plateau: posterior slope, concave medial and convex lateral."""
    (mx, my), (lx, ly) = PLATEAUS[-1][0], PLATEAUS[1][0]
    medial = -3.0 + 0.004 * ((x - mx) ** 2 + (y - my) ** 2)
    lateral = -1.5 - 0.006 * ((x - lx) ** 2 + (y - ly) ** 2)
    return np.where(x < 0, medial, lateral) + 0.1 * y


def _tibia_distance(r: Region) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = r.x, r.y, r.z
    top = _tibia_top(x, y)
    fade = np.exp(np.minimum(z + 22, 0) / 14)
    a, b, yc = 15 + 24 * fade, 14 + 13 * fade, 2 - 4 * fade
    side = (np.sqrt((x / a) ** 2 + ((y - yc) / b) ** 2) - 1) * np.minimum(a, b)
    d = np.maximum(side, z - top)
    for sx in (-5.0, 5.0):  # intercondylar spines
        d = _smin(d, r.ellipsoid_distance((sx, 0.0, -3.0), (3.5, 8.0, 7.5)), 1.5)
    d = _smin(d, r.ellipsoid_distance((0.0, 24.0, -32.0), (10.0, 6.0, 11.0)), 3.0)  # tuberosity
    return d, z - top


def knee(vol: Volume, a: Anatomy, labels: dict[str, int]) -> None:
    """Paint the knee; structure values follow `structures.toml`."""
    fem, pat = femur_frame(a), patella_frame(a, bool(labels.get("PD")))
    fem_out, pat_out = np.linalg.inv(fem), np.linalg.inv(pat)

    # Soft tissues: skin, subcutaneous fat, muscle; fat in front of the joint and behind it.
    r = vol.region((-90, -90, -120), (90, 90, 120))
    r.limb(54 * a.width, a.fat, centre_y=-4.0, ry=57.0)
    inside = r.ellipsoid((0, -4, 0), (54 * a.width - 1.5 - a.fat, 57 - 1.5 - a.fat, 500)) <= 1
    r.paint(inside & (r.ellipsoid((0, 40, 0), (80, 30, 34)) <= 1), "fat")  # prepatellar and peripatellar
    r.paint(r.ellipsoid((0, -30, 6), (16, 14, 40)) <= 1, "fat")  # popliteal fossa
    for x, y, radius in ((3.0, -32.0, 3.2), (-3.0, -36.0, 3.6)):  # popliteal artery and vein
        v = vol.region((x - radius, y - radius, -120), (x + radius, y + radius, 120))
        v.paint((v.x - x) ** 2 + (v.y - y) ** 2 <= radius**2, "vessel")
    r = vol.region((-35, -12, -20), (35, 50, 30))
    r.paint(r.ellipsoid((0, 24, -1), (19, 11, 12)) <= 1, "fat")  # infrapatellar (Hoffa) fat pad
    r.paint(r.ellipsoid((0, -4, 6), (40, 30, 16)) <= 1, "fat")  # fat around the cruciates and the capsule

    # Fluid recesses in the femoral frame: suprapatellar pouch, posterior condylar recesses,
    # from a film (fluid 0) to distended (fluid 1).
    r = vol.region((-45, -45, -5), (45, 40, 80), fem)

    def recess(film, distended):
        return [tuple(f + a.fluid * (d - f) for f, d in zip(*pair)) for pair in zip(film, distended)]

    r.paint(r.ellipsoid(*recess(((0, 19, 40), (18, 1.8, 12)), ((0, 19.5, 44), (22, 7, 21)))) <= 1, "fluid")
    for side in (-1, 1):
        posterior = recess(((side * 21, -31, 16), (7, 1.5, 8)), ((side * 21, -30, 18), (10, 4.5, 14)))
        r.paint(r.ellipsoid(*posterior) <= 1, "fluid")

    # Tendons: quadriceps (femoral frame) and patellar (patella to tibial tuberosity).
    r = vol.region((-20, 20, 30), (20, 50, 120), fem)
    radius, _ = r.band((0, 41, 44), (0, 31, 120), 13, 3.5)
    r.paint(radius <= 1, "tendon")
    lower_pole = _apply(pat_out, (0, 40, 10))
    r = vol.region((-20, 10, -40), (25, 55, 20))
    radius, _ = r.band(lower_pole, (0, 29, -32), 12, 2.8)
    r.paint(radius <= 1, "tendon")

    _cruciates(vol, labels, fem_out)
    _collaterals(vol, labels, fem_out)
    _menisci(vol, a, labels)
    _tibia(vol, a, labels)
    _femur(vol, a, labels, fem)
    _patella(vol, a, labels, pat)


def _torn_band(vol: Volume, start, end, width, thickness, across, label: int | None, torn: bool, gap=(0.38, 0.62)) -> None:
    lo, hi = np.minimum(start, end) - 12, np.maximum(start, end) + 12
    r = vol.region(lo, hi)
    radius, t = r.band(start, end, width, thickness, across)
    if not torn:
        r.paint(radius <= 1, "ligament", label)
        return
    middle = (t > gap[0] - 0.08) & (t < gap[1] + 0.08)
    r.paint(middle & (r.band(start, end, width + 3, thickness + 3, across)[0] <= 1), "oedema")
    wavy = radius <= 1 + 0.5 * np.sin(t * 40)  # retracted, lax fibres
    r.paint(wavy & ~((t > gap[0]) & (t < gap[1])), "ligament", label, t2=30.0)
    r.paint((radius <= 1) & (t > gap[0]) & (t < gap[1]), "fluid")


def _cruciates(vol: Volume, labels, fem_out) -> None:
    acl = (_apply(fem_out, (8.0, -12.0, 20.0)), np.array([1.0, 11.0, -2.0]))
    _torn_band(vol, *acl, 5.0, 3.0, (1, 0, 0), 10, bool(labels.get("ACL")))
    pcl = (_apply(fem_out, (-9.0, 3.0, 11.0)), np.array([0.0, -23.0, -11.0]))
    _torn_band(vol, *pcl, 6.5, 4.0, (1, 0, 0), 11, bool(labels.get("PCL")))


def _collaterals(vol: Volume, labels, fem_out) -> None:
    """MCL (a broad flat band) and LCL (a cord to the fibular head): not segmented."""
    paths = {
        "MCL": ([_apply(fem_out, (-42.0, -3.0, 27.0)), (-42.0, -2.0, -3.0), (-41.0, 0.0, -28.0), (-25.0, 8.0, -58.0)], 6.0, 1.6, (0, 1, 0)),
        "LCL": ([_apply(fem_out, (43.0, -6.0, 25.0)), (40.0, -16.0, -5.0), (37.0, -21.0, -22.0)], 2.8, 2.8, (0, 1, 0)),
    }
    for abbr, (points, width, thickness, across) in paths.items():
        injured = bool(labels.get(abbr))
        for start, end in zip(points[:-1], points[1:]):
            start, end = np.asarray(start, float), np.asarray(end, float)
            r = vol.region(np.minimum(start, end) - 12, np.maximum(start, end) + 12)
            if injured:
                r.paint(r.band(start, end, width + 4, thickness + 5, across)[0] <= 1, "oedema")
                r.paint(r.band(start, end, width + 1, thickness * 2, across)[0] <= 1, "sprain")
            else:
                r.paint(r.band(start, end, width, thickness, across)[0] <= 1, "ligament")


def _menisci(vol: Volume, a: Anatomy, labels) -> None:
    """C-shaped wedges on the plateau rims, open toward the notch, posterior horn broader.

    A tear of extent e (`Anatomy.meniscus`) is an oblique cleft through the posterior horn to
    the inferior surface, 1.2 mm wide at e = 0 and 3.6 mm at 1; from e = 0.4 the horn's inner
    quarter (up to three quarters at e = 1) is also lost (a displaced fragment: fluid where it
    was), and from e = 0.6 a parameniscal cyst, 9-13 mm across, lies at the horn's periphery.
    A healthy meniscus with degeneration d carries intermediate mucoid signal inside the horn,
    not reaching a surface, from d = 0.3."""
    for index, (side, label, abbr, gap) in enumerate(((-1, 8, "MM", 0.75), (1, 9, "LM", 0.45))):
        (cx, cy), (rx, ry) = PLATEAUS[side]
        r = vol.region((cx - rx - 4, cy - ry - 8, -8), (cx + rx + 4, cy + ry + 4, 8))
        rho = np.sqrt(((r.x - cx) / rx) ** 2 + ((r.y - cy) / ry) ** 2)
        angle = np.arctan2(r.y - cy, -side * (r.x - cx))  # 0 toward the notch
        inner = 0.6 + 0.08 * np.sin(angle)  # smaller inner radius (broader horn) posteriorly
        height = 7.0 * np.clip((rho - inner) / (0.92 - inner), 0, 1) * np.clip((1.06 - rho) / 0.08, 0, 1)
        above = r.z - _tibia_top(r.x, r.y)
        wedge = (rho > inner) & (rho < 1.06) & (above > 0.2) & (above < 0.2 + height) & (np.abs(angle) > gap)
        r.paint((rho >= 1.0) & (rho < 1.16) & (above > -1) & (above < 9) & (np.abs(angle) > gap), "capsule")
        r.paint(wedge, "meniscus", label)
        extent, horn = a.meniscus[index], wedge & (r.y < cy - 0.45 * ry)
        if not labels.get(abbr):
            core = np.abs(above - 0.2 - 0.6 * height) < 0.1 * height
            middle = np.abs(rho - 0.5 * (inner + 1.0)) < 0.18 * (1.0 - inner) * (extent - 0.3) / 0.7
            r.paint(horn & core & middle & (height > 5.0), "mucoid", label)
            continue
        cleft = np.abs(above - 0.2 - 0.45 * height + 1.0) < 0.6 + 1.2 * extent
        r.paint(horn & cleft & (rho < 0.97), "fluid")
        if extent > 0.4:
            lost = rho < inner + (0.25 + 0.5 * (extent - 0.4) / 0.6) * (1.06 - inner)
            r.paint(horn & lost, "fluid", 0)
        if extent > 0.6:
            grow = 5.0 * (extent - 0.6)
            r.paint((r.ellipsoid((cx, cy - 1.12 * ry, 3.5), (4.5, 3.5, 3.5), grow) <= 1) & ~wedge, "fluid")


def _tibia(vol: Volume, a: Anatomy, labels) -> None:
    r = vol.region((-48, -38, -130), (48, 36, 10))
    distance, above = _tibia_distance(r)
    for side, label in ((-1, 5), (1, 6)):
        (cx, cy), (rx, ry) = PLATEAUS[side]
        rho2 = ((r.x - cx) / rx) ** 2 + ((r.y - cy) / ry) ** 2
        deg = a.degeneration[0 if side < 0 else 1]
        peak = (2.3 if side < 0 else 2.8) * a.cartilage * (1 - 0.45 * deg)
        thickness = peak * np.sqrt(np.clip(1 - rho2**2, 0, 1))
        if deg > 0.55:  # focal full-thickness defect in the weight-bearing zone
            thickness = np.where(((r.x - cx) ** 2 + (r.y - cy - 2) ** 2) < 16, 0.0, thickness)
        _cartilage(r, above, thickness.astype(np.float32), label, a, deg)
    cortex = 1.2 + 2.0 * _smoothstep((-r.z - 30) / 25)
    _bone(r, distance, 2, a.texture + 2, cortex)
    if labels.get("ACL") and a.bruise < 0.6:  # posterolateral plateau contusion
        r.paint((r.ellipsoid((22, -16, -9), (11, 8, 7)) <= 1) & (distance < -1.2), "bruise", 2)
    # Fibula: head beside the posterolateral tibia and the shaft below it (not segmented).
    r = vol.region((18, -40, -130), (48, -5, -10))
    fibula = _smin(r.ellipsoid_distance((34, -22, -31), (9, 9, 10)),
                   (np.hypot(r.x - 31, r.y + 23) - 6.5) + np.maximum(r.z + 30, 0), 3.0)
    _bone(r, fibula, None, a.texture + 4)


def _femur(vol: Volume, a: Anatomy, labels, fem) -> None:
    r = vol.region((-50, -38, -6), (50, 34, 130), fem)
    distance = _femur_distance(r)
    x, y, z = r.x, r.y, r.z
    # Articular cartilage: distal and posterior condyles and the trochlea, thinning at its edges.
    medial = x < 0
    deg = np.where(medial, a.degeneration[0], a.degeneration[1]).astype(np.float32)
    top = 30 + 12 * _smoothstep(y / 14)
    edge = _smoothstep((top - z) / 8) * _smoothstep((35 - np.abs(x)) / 5) * _smoothstep((np.abs(x) - 5 + np.maximum(y, 0)) / 4)
    thickness = 2.4 * a.cartilage * (1 - 0.45 * deg) * np.sqrt(edge)
    for side in (-1, 1):
        centre = CONDYLES[side][0]
        if a.degeneration[0 if side < 0 else 1] > 0.55:  # focal defect where the condyle bears weight
            pit = ((x - centre[0]) ** 2 + (y - centre[1] - 3) ** 2 < 25) & (z < 8) & ((x < 0) == (side < 0))
            thickness = np.where(pit, 0.0, thickness)
    _cartilage(r, distance, thickness.astype(np.float32), 4, a, deg)
    cortex = 1.2 + 2.0 * _smoothstep((z - 45) / 25)
    _bone(r, distance, 1, a.texture + 1, cortex)
    scar = (distance < -2) & (np.abs(z - 30 - 3 * np.cos(x / 9)) < 0.5)  # physeal scar
    r.paint(scar, "cortex", 1)
    bruises = []
    if labels.get("ACL") and a.bruise < 0.6:
        bruises.append(((22, 4, 4), (9, 9, 7)))  # lateral femoral condyle, terminal sulcus
    if labels.get("PD"):
        bruises.append(((27, 14, 14), (8, 8, 8)))  # anterolateral condyle, kissing the patella
    for centre, radii in bruises:
        r.paint((r.ellipsoid(centre, radii) <= 1) & (distance < -1.2), "bruise", 1)


def _patella(vol: Volume, a: Anatomy, labels, pat) -> None:
    r = vol.region((-26, 18, 4), (26, 48, 48), pat)
    x, y, z = r.x, r.y, r.z
    ridge = 27.0 + 0.35 * np.abs(x)  # posterior surface: median ridge and two facets
    shell = r.ellipsoid_distance((0, 34, 26), (21, 10.0, 17))
    distance = np.maximum(shell, ridge - y)
    thickness = 3.6 * a.cartilage * np.sqrt(np.clip(1 - (x / 19) ** 2 - ((z - 26) / 15) ** 2, 0, 1))
    _cartilage(r, distance, thickness.astype(np.float32), 7, a, 0.0)
    _bone(r, distance, 3, a.texture + 3)
    if labels.get("PD"):
        r.paint((r.ellipsoid((-12, 31, 24), (7, 6, 8)) <= 1) & (distance < -1.2), "bruise", 3)
        medial = vol.region((-40, 15, 5), (-10, 45, 45), pat)
        medial.paint((medial.ellipsoid((-27, 31, 26), (6, 9, 10)) <= 1) & (vol.label[medial.box] == 0), "oedema")


# --- ankle and shoulder: the same solids and lesions at their own scale, no segmentation structures ---

TALUS_AXIS = (0.0, 0.0, -12.0)  # centre of the talar dome's sagittal curvature (patient mm)


def _soft_tissue(r: Region, outer: np.ndarray, fat: float, muscle: np.ndarray) -> None:
    """Skin, subcutaneous fat and, where `muscle`, muscle under it, inside the body surface
    given as a signed distance `outer` (mm, negative inside)."""
    r.paint(outer <= 0, "skin")
    r.paint(outer <= -1.5, "fat")
    r.paint((outer <= -1.5 - fat) & muscle, "muscle")


def _tendons(vol: Volume, paths, radius: float = 2.4) -> None:
    """Round tendons along straight paths (start, end) in patient mm."""
    for start, end in paths:
        start, end = np.asarray(start, float), np.asarray(end, float)
        r = vol.region(np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        r.paint(r.tube(start, end, radius)[0], "tendon")


def ankle(vol: Volume, a: Anatomy, labels: dict[str, int]) -> None:
    """Tibia with its plafond and medial malleolus, fibula with the lateral malleolus, the
    talus (a dome of constant sagittal curvature, neck and head) under a cartilage-lined
    mortise, calcaneus and navicular; Achilles, flexor, peroneal and extensor tendons;
    Kager's fat; ATFL and CFL as flat bands. The foot is plantarflexed by a per-subject angle
    about the talar dome's axis. Lesions: ATFL / CFL tears (fluid gap in lax fibres, oedema),
    Achilles rupture (a gap of 5-22 mm about 5 cm above the insertion, thickened stumps, oedema;
    healthy tendons may be thickened with intrasubstance signal: tendinopathy),
    osteochondral lesion of the medial talar dome (cartilage defect over a subchondral cyst
    in marrow oedema). No segmentation structures."""
    foot = _about(_rotation(0, -0.5 * a.flexion), TALUS_AXIS)  # patient -> foot bones frame
    foot_out = np.linalg.inv(foot)
    r = vol.region((-90, -90, -120), (90, 90, 120))
    leg = (np.hypot(r.x / 36, (r.y + 6) / 42) - 1) * 36
    foot_box = np.maximum(np.maximum(np.abs(r.x) - 40, -r.y - 58), np.maximum(-r.z - 62, r.z + 12 + 0.3 * np.maximum(r.y - 20, 0)))
    outer = _smin(np.maximum(leg, -r.z - 30), foot_box, 12.0)
    _soft_tissue(r, outer, a.fat * 0.6, (r.z > 30) | (r.ellipsoid((0.0, 30.0, -55.0), (30.0, 50.0, 6.0)) <= 1))
    _tendons(vol, [((-21, -8, 80), (-19, 4, -26)), ((-16, -14, 80), (-14, -4, -34)), ((-8, -22, 80), (-8, -10, -40)),
                   ((24, -16, 80), (22, -8, -36)), ((27, -14, 80), (25, -4, -40)),
                   ((-12, 22, 80), (-16, 46, -26)), ((2, 24, 80), (4, 48, -22))])
    achilles = (np.array([0.0, -34.0, 90.0]), _apply(foot_out, (0.0, -47.0, -30.0)))
    if labels.get("ATR"):  # the gap from 5 mm (extent 0) to 22 mm (1), stumps thicker as it retracts
        e = a.tendon
        _torn_band(vol, *achilles, 7.0 + e, 3.5 + e, (1, 0, 0), None, True, gap=(0.58 - 0.07 * e, 0.62 + 0.07 * e))
    elif a.tendon > 0.5:  # tendinopathy: thickened, with intermediate signal in its core
        e = (a.tendon - 0.5) / 0.5
        _torn_band(vol, *achilles, 7.0 + e, 3.0 + 1.5 * e, (1, 0, 0), None, False)
        r = vol.region(np.minimum(*achilles) - 12, np.maximum(*achilles) + 12)
        radius, t = r.band(*achilles, 4.0, 1.0 + e, (1, 0, 0))
        r.paint((radius <= 1) & (t > 0.45) & (t < 0.75), "mucoid")
    else:
        _torn_band(vol, *achilles, 7.0, 3.0, (1, 0, 0), None, False)
    _ankle_bones(vol, a, labels, foot, foot_out)


def _ankle_bones(vol: Volume, a: Anatomy, labels, foot, foot_out) -> None:
    # Tibia in the patient frame: shaft flaring to a plafond that follows the dome 2.6 mm
    # away (two cartilage layers), the medial malleolus beside the talus.
    r = vol.region((-30, -25, -20), (25, 25, 120))
    dome_here = _dome(r, foot_out)
    flare = np.exp(-np.maximum(r.z - 8, 0) / 20)
    ax, ay = 12 + 7 * flare, 11 + 6 * flare
    shaft = (np.hypot(r.x / ax, r.y / ay) - 1) * np.minimum(ax, ay)
    tibia = np.maximum(np.maximum(shaft, 2.6 - dome_here), -r.z - 2)
    r.paint((dome_here > 0) & (dome_here < 2.6) & (shaft < 0) & (r.z > -2), "fluid")  # joint space
    tibia = _smin(tibia, np.maximum(r.ellipsoid_distance((-19.0, 1.0, -2.0), (5.0, 9.0, 13.0)), 1.5 - dome_here), 2.0)
    plafond = (1.3 * a.cartilage * np.clip(1 - (r.x / 16) ** 2 - (r.y / 15) ** 2, 0, 1) ** 0.5).astype(np.float32)
    _cartilage(r, np.where(r.z < 10, tibia, 99.0).astype(np.float32), plafond, None, a, 0.0)
    _bone(r, tibia, None, a.texture + 4)
    r.paint(r.ellipsoid((0.0, 16.0, 2.0), (10.0, 2.5, 4.0)) <= 1, "fluid")  # anterior recess
    # Fibula: shaft and the lateral malleolus, reaching below the mortise.
    r = vol.region((10, -20, -30), (35, 10, 120))
    fibula = _smin((np.hypot(r.x - 22, r.y + 6) - 6.0) + np.maximum(-r.z, 0),
                   np.maximum(r.ellipsoid_distance((21.0, -5.0, -6.0), (6.0, 9.0, 15.0)), 1.5 - _dome(r, foot_out)), 3.0)
    _bone(r, fibula, None, a.texture + 5)
    # Talus in the foot frame: dome (a sphere about the axis in y-z, flattened across x)
    # with a shallow central groove, neck and head; calcaneus below, navicular in front.
    r = vol.region((-25, -60, -60), (25, 50, 10), foot)
    talus = _smin(_dome(r, np.eye(4)), r.ellipsoid_distance((0.0, 24.0, -16.0), (11.0, 13.0, 9.0)), 4.0)
    talus = np.maximum(talus, -24.0 - r.z)  # flat undersurface over the subtalar joint
    calcaneus = _smin(r.ellipsoid_distance((0.0, -18.0, -36.0), (15.0, 30.0, 12.0)),
                      r.ellipsoid_distance((0.0, -42.0, -34.0), (13.0, 9.0, 15.0)), 5.0)
    navicular = r.ellipsoid_distance((0.0, 42.0, -16.0), (14.0, 5.0, 10.0))
    upper = np.clip((r.z + 8) / 6, 0, 1)  # articular dome above its sides
    thickness = (1.3 * a.cartilage * upper * np.sqrt(np.clip(1 - (r.x / 15) ** 2, 0, 1))).astype(np.float32)
    olt = labels.get("OLT")
    if olt:  # osteochondral lesion, medial talar dome: no cartilage over it
        thickness = np.where(r.ellipsoid((-8.0, 2.0, 5.0), (4.5, 5.0, 5.0)) <= 1, 0.0, thickness).astype(np.float32)
    _cartilage(r, talus, thickness, None, a, 0.0)
    _bone(r, talus, None, a.texture + 1)
    _bone(r, calcaneus, None, a.texture + 2)
    _bone(r, navicular, None, a.texture + 3)
    if olt:
        r.paint((r.ellipsoid((-8.0, 2.0, 1.0), (9.0, 9.0, 8.0)) <= 1) & (talus < -1.0), "bruise")
        r.paint((r.ellipsoid((-8.0, 2.0, 2.5), (3.5, 3.5, 3.0)) <= 1) & (talus < 0.5), "fluid")
    for abbr, (start, end, width, thickness) in {
        "ATFL": ((22.0, 3.0, -12.0), _apply(foot_out, (12.0, 17.0, -12.0)), 4.0, 1.4),
        "CFL": ((21.0, -6.0, -20.0), _apply(foot_out, (16.0, -16.0, -34.0)), 3.0, 1.8),
    }.items():
        _torn_band(vol, np.asarray(start), np.asarray(end), width, thickness, (0, 0, 1) if abbr == "ATFL" else (0, 1, 0),
                   None, bool(labels.get(abbr)))


def _dome(r: Region, foot_out) -> np.ndarray:
    """Distance (mm) to the talar dome with its shallow central groove, in the region's
    frame (`foot_out` takes the foot frame there): the dome is round about its axis in y-z
    and the groove runs along y, so plantarflexion only moves its centre."""
    return r.ellipsoid_distance(_apply(foot_out, TALUS_AXIS), (15.0, 17.0, 17.0)) + 1.2 * np.exp(-((r.x / 5) ** 2))


HUMERAL_HEAD = ((0.0, 0.0, 0.0), 24.0)  # centre (patient mm), radius


def shoulder(vol: Volume, a: Anatomy, labels: dict[str, int]) -> None:
    """Humeral head (a sphere with tuberosities, bicipital groove and shaft) on a concave
    glenoid with a fibrocartilage labrum, both cartilage-lined; acromion, clavicle and
    coracoid; the rotator cuff as a tendon cap over the head (supraspinatus above,
    infraspinatus behind, subscapularis in front) with muscle bellies medially; deltoid;
    the long biceps tendon from the superior glenoid through the groove. The arm is rotated
    by a per-subject angle about the humeral shaft. Lesions: SSP / ISP / SSC full-thickness
    tears (a fluid-filled gap at the footprint, retracted tendon), LHBT tear (empty groove,
    fluid), LHBT sheath effusion, SASD bursal fluid over the cuff, adhesive capsulitis
    (thickened oedematous axillary capsule and rotator interval). No segmentation
    structures."""
    arm = _about(_rotation(2, a.flexion - 10.0), HUMERAL_HEAD[0])  # patient -> humerus frame
    arm_out = np.linalg.inv(arm)
    r = vol.region((-90, -90, -120), (90, 90, 120))
    trunk = r.ellipsoid_distance((-45.0, 0.0, -60.0), (62.0, 58.0, 115.0))
    limb = r.ellipsoid_distance((4.0, 0.0, -40.0), (46.0, 44.0, 88.0))  # deltoid rounding over the head
    outer = _smin(trunk, limb, 14.0)
    _soft_tissue(r, outer, a.fat * 0.7, np.ones(outer.shape, bool))
    (cx, cy, cz), radius = HUMERAL_HEAD
    head = np.hypot(np.hypot(r.x - cx, r.y - cy), r.z - cz) - radius
    r.paint((head > 8) & (head < 10.5) & (r.x > -4) & (r.z > -25), "fat")  # fat plane under the deltoid
    if labels.get("SASD"):  # bursal fluid between the cuff and the deltoid / acromion
        r.paint((head > 6.5) & (head < 8.5) & (r.x > -8) & (r.z > 2) & (np.abs(r.y) < 20), "fluid")
    _cuff(vol, a, labels, arm_out)
    _scapula(vol, a, labels)
    _humerus(vol, a, labels, arm)


def _cuff(vol: Volume, a: Anatomy, labels, arm_out) -> None:
    """Supraspinatus, infraspinatus and subscapularis: tendon over the head laterally,
    muscle medially; a torn one has a fluid-filled full-thickness gap at its footprint and a
    retracted, frayed edge."""
    (cx, cy, cz), radius = HUMERAL_HEAD
    r = vol.region((-60, -45, -30), (35, 45, 45))
    x, y, z = r.x - cx, r.y - cy, r.z - cz
    head = np.hypot(np.hypot(x, y), z) - radius
    shell = (head > 0.6) & (head < 6.0)
    for abbr, where, footprint in (
        ("SSP", (z > 8) & (np.abs(y) < 12), (14.0, 2.0, 18.0)),
        ("ISP", (y < -8) & (z > -12), (12.0, -17.0, 8.0)),
        ("SSC", (y > 8) & (z < 10) & (z > -16), (4.0, 22.0, -2.0)),
    ):
        cap = shell & where & (x > -26)
        r.paint(cap & (x < -12), "muscle")
        r.paint(cap & (x >= -12), "tendon")
        if labels.get(abbr):
            gap = cap & (r.ellipsoid(footprint, (8.0, 8.0, 8.0)) <= 1)
            r.paint(gap, "fluid")
            r.paint(cap & ~gap & (r.ellipsoid(footprint, (12.0, 12.0, 12.0)) <= 1), "sprain")  # frayed stump
    if labels.get("AC"):  # adhesive capsulitis: thick capsule in the axillary recess and rotator interval
        r.paint((head > 0.4) & (head < 4.5) & (z < -14) & (x > -22), "oedema")
        r.paint((head > 0.4) & (head < 4.5) & (y > 10) & (z > 8) & (x > -10), "sprain")
    else:
        r.paint((head > 0.4) & (head < 1.6) & (z < -14) & (x > -22), "capsule")


def _scapula(vol: Volume, a: Anatomy, labels) -> None:
    """Glenoid (concave, 2.6 mm from the head: two cartilage layers), labrum, scapular
    neck, acromion, clavicle, coracoid."""
    (cx, cy, cz), radius = HUMERAL_HEAD
    r = vol.region((-70, -40, -30), (40, 40, 60))
    head = np.hypot(np.hypot(r.x - cx, r.y - cy), r.z - cz) - radius
    face = np.hypot(r.y / 13.0, (r.z - 1.0) / 18.0)
    vault = r.ellipsoid_distance((-42.0, 0.0, 1.0), (24.0, 13.0, 18.0))  # narrowing into the scapular neck
    glenoid = np.maximum(np.maximum(vault, 2.6 - head), r.x + 18.0)
    thickness = (1.6 * a.cartilage * np.sqrt(np.clip(1 - face**2, 0, 1))).astype(np.float32)
    _cartilage(r, np.where(r.x > -30, glenoid, 99.0).astype(np.float32), thickness, None, a, 0.0)
    labrum = (np.abs(face - 1.0) < 0.17) & (head > 0.3) & (head < 5.0) & (r.x > -25)
    r.paint(labrum, "meniscus")
    acromion = np.maximum(np.maximum(np.abs(r.z - 36.0 - 0.1 * r.x) - 3.5, np.abs(r.y + 2.0) - 16.0),
                          np.maximum(r.x - 22.0, -r.x - 60.0))
    clavicle = np.maximum(np.hypot(r.y - 14.0, r.z - 40.0) - 7.0, r.x + 6.0)
    coracoid = r.ellipsoid_distance((-22.0, 30.0, 16.0), (6.0, 10.0, 5.0))
    for i, bone in enumerate((glenoid, acromion, clavicle, coracoid)):
        _bone(r, bone, None, a.texture + 1 + i)


def _humerus(vol: Volume, a: Anatomy, labels, arm) -> None:
    (cx, cy, cz), radius = HUMERAL_HEAD
    r = vol.region((-30, -30, -120), (40, 32, 30), arm)
    x, y, z = r.x - cx, r.y - cy, r.z - cz
    head = np.hypot(np.hypot(x, y), z) - radius
    tuberosities = _smin(r.ellipsoid_distance((16.0, 2.0, 8.0), (10.0, 14.0, 14.0)),
                         r.ellipsoid_distance((6.0, 19.0, -4.0), (7.0, 6.0, 9.0)), 2.0)
    shaft = np.maximum(np.hypot(r.x - 6.0, r.y - 2.0) - 12.0, r.z + 10.0)
    humerus = _smin(_smin(head, tuberosities, 3.0), shaft, 8.0)
    groove = np.hypot(r.x - 13.0, r.y - 18.0) - 4.0  # bicipital groove between the tuberosities
    humerus = np.maximum(humerus, -groove)
    thickness = (1.3 * a.cartilage * _smoothstep((-x - 2.0) / 8.0)).astype(np.float32)  # facing the glenoid
    _cartilage(r, head, thickness, None, a, 0.0)
    _bone(r, humerus, None, a.texture + 6)
    # Long head of the biceps: in the groove, over the head to the superior glenoid.
    tendon = [(13.0, 19.0, -70.0), (13.0, 19.0, -2.0), (6.0, 14.0, 22.0), (-20.0, 1.0, 20.0)]
    for start, end in zip(tendon[:-1], tendon[1:]):
        start, end = _apply(np.linalg.inv(arm), start), _apply(np.linalg.inv(arm), end)
        t = vol.region(np.minimum(start, end) - 9, np.maximum(start, end) + 9)
        if labels.get("LHBT_EFFU"):
            t.paint(t.tube(start, end, 5.0)[0], "fluid")
        inside, along = t.tube(start, end, 2.6)
        if labels.get("LHBT") and start[2] < -60:  # ruptured and retracted: an empty groove
            t.paint(inside & (along > 0.6), "fluid")
            t.paint(inside & (along <= 0.6), "tendon")
        else:
            t.paint(inside, "tendon")


# --- lumbar spine and thigh: solids of known size, so their biomarkers have exact true values ---

BODY_HEIGHT, BODY_RADII, DISC_RADII = 25.0, (22.0, 16.0), (21.0, 15.0)  # mm, vertebral bodies and discs
DISC_HEIGHTS = (8.0, 9.0, 10.0, 11.0)  # L1-L2 ... L4-L5, mm, before each subject's factor


def disc_heights(a: Anatomy, labels: dict[str, int]) -> list[float]:
    """Patient-frame heights (mm) of the L1-L2 ... L4-L5 discs: each subject's own, one disc
    (most often L4-L5) halved by degeneration (`DDD`)."""
    rng = np.random.default_rng(a.texture)
    heights = [h * float(rng.uniform(0.85, 1.15)) for h in DISC_HEIGHTS]
    if labels.get("DDD"):
        heights[int(rng.choice(4, p=[0.1, 0.2, 0.3, 0.4]))] *= 0.5
    return heights


def spine(vol: Volume, a: Anatomy, labels: dict[str, int]) -> None:
    """Lumbar spine along z: five vertebral bodies (elliptic cylinders, structure 1) and the
    four discs between them (structures 2-5, L1-L2 at the top), a spinal canal of fluid
    behind them, in a torso of skin, fat and muscle. Lesion: `DDD` (a thinned disc)."""
    heights = disc_heights(a, labels)
    r = vol.region((-200, -200, -250), (200, 250, 250))
    r.limb(150.0, 2 * a.fat, centre_y=60.0, ry=115.0)
    r.paint(np.hypot(r.x / 9.0, (r.y + 28.0) / 7.0) <= 1, "fluid")
    z = -(5 * BODY_HEIGHT + sum(heights)) / 2  # inferior end plate of L5
    for level in range(5):  # L5 upwards
        box = vol.region((-30, -25, z - 2), (30, 25, z + BODY_HEIGHT + 2))
        section = (np.hypot(box.x / BODY_RADII[0], box.y / BODY_RADII[1]) - 1) * BODY_RADII[1]
        _bone(box, np.maximum(section, np.abs(box.z - z - BODY_HEIGHT / 2) - BODY_HEIGHT / 2), 1, a.texture + level)
        z += BODY_HEIGHT
        if level < 4:
            h = heights[3 - level]
            box = vol.region((-25, -20, z - 1), (25, 20, z + h + 1))
            inside = (np.hypot(box.x / DISC_RADII[0], box.y / DISC_RADII[1]) <= 1) & (box.z >= z) & (box.z < z + h)
            box.paint(inside, "disc", 5 - level)
            z += h


def thigh_sections(a: Anatomy, labels: dict[str, int]) -> dict[str, float]:
    """Patient-frame radii (mm) of the thigh's circular cross-section: `outer` (skin surface),
    `muscle` (fascia: muscle inside, subcutaneous fat outside, under 1.5 mm of skin) and
    `femur`; atrophy (`SARC`) trades muscle for fat."""
    rng = np.random.default_rng(a.texture)
    outer = 75.0 * float(rng.uniform(0.9, 1.1))
    fat = 1.5 * a.fat + (12.0 if labels.get("SARC") else 0.0)
    return {"outer": outer, "muscle": outer - 1.5 - fat, "femur": 14.0}


THIGH_MUSCLES = {2: (-10.0, 170.0), 4: (170.0, 250.0), 3: (250.0, 350.0)}  # label: degrees from +x (lateral), y anterior


def thigh(vol: Volume, a: Anatomy, labels: dict[str, int]) -> None:
    """A thigh along z with a constant circular section: femur (1) in the centre, quadriceps
    (2, anterior and lateral), hamstrings (3, posterior), adductors (4, medial) as sectors of
    the muscle annulus, subcutaneous fat (5). Lesion: `SARC` (muscle atrophy)."""
    radii = thigh_sections(a, labels)
    r = vol.region((-120, -120, -250), (120, 120, 250))
    r.limb(radii["outer"], radii["outer"] - 1.5 - radii["muscle"])
    radius = np.hypot(r.x, r.y)
    r.paint((radius <= radii["outer"] - 1.5) & (radius > radii["muscle"]), "fat", 5)
    angle = np.degrees(np.arctan2(r.y, r.x)) % 360
    for label, (start, end) in THIGH_MUSCLES.items():
        r.paint((radius <= radii["muscle"]) & (radius > radii["femur"]) & ((angle - start) % 360 < end - start), "muscle", label)
    _bone(r, radius - radii["femur"], 1, a.texture, cortex=4.0)


def true_biomarkers(joint: str, a: Anatomy, labels: dict[str, int], slab: float) -> dict[str, float]:
    """The world-mm truth of the spine's disc heights (`disc_height_<abbr>`) and of the
    thigh's volumes (`volume_<abbr>`, mm^3, within an axial slab `slab` mm thick), from the
    phantom's geometry: the patient frame is the world scaled by `scale` (and `width` across)."""
    from orthodiff.catalogs.tasks import structures

    if joint not in ("spine", "thigh"):
        return {}
    abbr = {s.value: s.abbr for s in structures(joint).structures}
    if joint == "spine":
        return {f"disc_height_{abbr[5 - i]}": h * a.scale for i, h in enumerate(reversed(disc_heights(a, labels)))}
    r = thigh_sections(a, labels)
    muscle = r["muscle"] ** 2 - r["femur"] ** 2
    areas = {1: np.pi * r["femur"] ** 2, 5: np.pi * ((r["outer"] - 1.5) ** 2 - r["muscle"] ** 2),
             **{label: np.radians(end - start) / 2 * muscle for label, (start, end) in THIGH_MUSCLES.items()}}
    return {f"volume_{abbr[v]}": float(area * a.scale**2 * a.width * slab) for v, area in sorted(areas.items())}


PHANTOMS = {"knee": knee, "ankle": ankle, "shoulder": shoulder, "spine": spine, "thigh": thigh}


def render(joint: str, anatomy: Anatomy, labels: dict[str, int], shape, index_to_world: np.ndarray) -> Volume:
    """The phantom of `joint` on the grid `shape` (k, j, i) whose indices map to world mm by
    `index_to_world` (4x4)."""
    volume = Volume(shape, anatomy.world_to_patient() @ index_to_world)
    PHANTOMS[joint](volume, anatomy, labels)
    return volume


def true_thickness(anatomy: Anatomy, labels: dict[str, int], spacing: float = 1.25) -> dict[int, float]:
    """Mean thickness (world mm) of each knee cartilage (structure value -> mm) over its
    surface, from the phantom sampled on a grid in each bone's own frame."""
    fem, pat = femur_frame(anatomy), patella_frame(anatomy, bool(labels.get("PD")))
    boxes = (
        (_femur, (fem,), fem, (-42, -36, -6), (42, 38, 48)),
        (_tibia, (), np.eye(4), (-40, -26, -8), (40, 24, 5)),
        (_patella, (pat,), pat, (-24, 18, 6), (24, 32, 46)),
    )
    out: dict[int, float] = {}
    for paint, extra, frame, lo, hi in boxes:
        shape = tuple(int(np.ceil((h - l) / spacing)) for l, h in zip(lo[::-1], hi[::-1]))
        grid = np.diag([spacing, spacing, spacing, 1.0])
        grid[:3, 3] = lo
        volume = Volume(shape, np.linalg.inv(frame) @ grid)
        paint(volume, anatomy, labels, *extra)
        for label, (voxels, inverse) in volume.cartilage.items():
            if voxels:
                out[label] = anatomy.scale * voxels / inverse
    return dict(sorted(out.items()))
