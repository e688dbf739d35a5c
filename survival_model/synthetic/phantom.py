"""Analytic synthetic MRI head phantom with brain metastases.

Everything here is an implicit function of physical position, so one patient renders on any grid,
orientation, voxel size or patient position, deterministically and fast (numpy/scipy only).

Coordinates
-----------
Patient LPS in millimetres, as in DICOM/ITK: +x towards the patient's Left, +y Posterior,
+z Superior; the head centre is the physical origin. A :class:`Grid` follows SimpleITK: ``size`` is
``(nx, ny, nz)``, the physical point of continuous index ``(i, j, k)`` is
``origin + D @ (spacing * [i, j, k])``, and every rendered array is in numpy order ``(nz, ny, nx)``
(as ``sitk.GetArrayFromImage``): float32 for images, uint8 for label maps. A :class:`RigidMotion`
moves the patient: the image at scanner point ``p`` shows the phantom at ``T^-1(p)`` where
``T(q) = R q + t`` rotates about the head centre (``R = Rz @ Ry @ Rx``, angles in degrees).

Anatomy model (:class:`Head`, tissue codes below)
-------------------------------------------------
The anatomy is written in a *template* frame (an average adult head, semi-axes 76 x 95 x 73 mm) and
scaled per axis to the patient's head; layer thicknesses are in real millimetres.

* Head: a superellipsoid (exponent 2.5: a skull is boxier than an ellipsoid) with semi-axes
  ``Head.semi_axes_mm`` (the inferior z semi-axis is 1.15 times the superior one) united with a neck
  cylinder. Depth below the skin is a first-order signed-distance approximation.
* Scalp (skin + subcutaneous fat, ~5 mm), skull (~6 mm, with a skull base whose floor steps down
  through the anterior, middle and posterior cranial fossae), and below the skull base face soft
  tissue with eyes, orbital fat and air sinuses.
* Intracranial space: a subarachnoid CSF layer (1-2.5 mm), then the brain. The interhemispheric
  fissure (CSF around the falx, a dural sheet) separates the hemispheres down to the corpus
  callosum; the tentorium (dura with CSF on both sides) separates the cerebrum from the posterior
  fossa.
* Cortex: a grey-matter shell (2.3-3 mm) under every CSF surface. Sulci are CSF sheets 1.2-2.2 mm
  wide reaching 10-16 mm deep, wrapped in grey matter, so gyri have white-matter cores. They sit on
  the zero set of a smooth random field (24 random cosines, wavelength 15-21 mm) evaluated on the
  brain surface and extruded along its normal (radially under the vault, vertically above the skull
  base and tentorium, across the midline on the medial surface), so they run perpendicular to the
  surface like real sulci. White matter fills the rest.
* Lateral ventricles (two arched ellipsoids either side of the septum, width scaled by an atrophy
  factor that also widens the CSF spaces and sulci), a third ventricle, and deep grey nuclei
  (caudate, thalamus, lentiform nucleus) leaving an internal capsule of white matter.
* Posterior fossa (infratentorial, :meth:`Head.is_infratentorial`): a brainstem (midbrain, pons with
  its anterior bulge, medulla; white matter) in a thin cistern, a fourth ventricle, and a cerebellum
  whose folia are fissures fanning out from a transverse axis (a fan on sagittal slices, arcs on
  axial and coronal ones), warped by a random field, around a white-matter core.

Random fields are sums of 6-30 random cosines in physical coordinates, seeded from integers stored
in the dataclasses. On a grid a cosine of an affine function of the voxel index is separable, so a
field costs one small matrix product (``_field_on_map``) instead of a cosine per voxel and term.

Tissue codes (:func:`render_tissues`): 0 air, 1 scalp/fat (skin, subcutaneous and orbital fat),
2 skull (bone), 3 CSF (subarachnoid and sulcal), 4 GM, 5 WM (includes brainstem), 6 ventricles,
7 deep grey nuclei, 8 dura (falx, tentorium), 9 soft tissue (muscle, face, neck), 10 eye (vitreous).
Label codes (:func:`render_labels`, BraTS-METS): 0 background, 1 NETC, 2 SNFH, 3 ET.

Intensity table (fraction of ``scale``; white matter is the per-sequence reference)
--------------------------------------------------------------------------------------
=============  =====  =====  =====  =====
tissue          t1n    t1c    t2w    t2f
=============  =====  =====  =====  =====
air            0.00   0.00   0.00   0.00
scalp / fat    1.25   1.25   0.95   0.85
skull          0.06   0.07   0.05   0.05
CSF            0.22   0.24   1.45   0.10
GM             0.62   0.64   0.72   0.80
WM             0.88   0.90   0.50   0.62
ventricles     0.20   0.22   1.50   0.08
deep GM        0.70   0.72   0.62   0.72
dura           0.30   0.80   0.20   0.25
soft tissue    0.52   0.62   0.38   0.42
eye            0.18   0.19   1.40   0.10
NETC           0.30   0.28   1.25   0.80
SNFH (edema)   0.55   0.57   1.10   1.25
ET             0.62   1.40+  0.85   0.95
=============  =====  =====  =====  =====

ET on t1c (1.40+) is the value at ``Lesion.enhancement = 0``: a lesion's contrast enhancement
multiplies it by ``1 + ENHANCEMENT_AMPLITUDE * enhancement`` (amplitude 0.15; ``enhancement`` is a
latent in standard deviations, within +-3), so ET t1c is 0.98-1.82 at +-2 SD (0.88-1.93 at the
cohort's +-2.5 clip) against white matter's 0.90. Only ET on t1c changes: necrosis, edema, the labels
and the other sequences do not.

* ``t1n`` (native T1): short T1 makes fat brightest and myelinated WM brighter than GM; free water
  (CSF, vitreous, necrosis) is dark; cortical bone has no signal; tumour is hypo- to isointense.
* ``t1c`` (T1 + gadolinium): as t1n, but contrast leaks where the blood-brain barrier is broken, so
  the enhancing rim is the brightest tissue, the necrotic core stays dark, dura and muscle enhance a
  little. How strongly a lesion enhances varies between patients (``Lesion.enhancement``, above).
* ``t2w`` (T2): long T2 makes free water brightest (CSF, ventricles, eyes), edema and necrosis bright,
  WM darker than GM; fat stays fairly bright on fast spin echo.
* ``t2f`` (FLAIR): T2 weighting with the free-water signal nulled by inversion, so CSF is dark while
  edema (bound, interstitial water) is the brightest tissue and GM is brighter than WM.

Each tissue gets a mild multiplicative texture (1-6 %) from a fine random field that moves with the
patient. Inside lesions the ``heterogeneity`` field modulates enhancing (and, less, necrotic) tissue
on every sequence; edema fades from its full value at the tumour to 60 % of the way towards the
underlying tissue at its outer edge.

Image formation (:func:`render_sequence`)
-----------------------------------------
Point sampling at voxel centres (averaging 3-7 sub-samples through the slice when the slice spacing
exceeds twice the smallest spacing), Gaussian PSF (FWHM in mm per axis, axes whose sigma is below 0.3
voxel skipped), multiplicative bias field (:class:`BiasField`: ``exp(strength * f)`` with ``f`` a
zero-mean smooth field normalised to peak 1 over a 100 mm ball about the isocentre and clipped to
[-1, 1]; it belongs to the scanner and does not move with the patient), scaling, then Rician noise:
the magnitude of the image plus complex Gaussian noise with sigma ``noise_sigma * WM * scale``, so air
has the Rayleigh floor of real magnitude images.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "AIR",
    "CSF",
    "DEEP_GM",
    "DURA",
    "ENHANCEMENT_AMPLITUDE",
    "EYE",
    "GM",
    "INTRACRANIAL_TISSUES",
    "LABEL_ET",
    "LABEL_NETC",
    "LABEL_SNFH",
    "PARENCHYMA_TISSUES",
    "SCALP",
    "SEQUENCES",
    "SKULL",
    "SOFT_TISSUE",
    "TISSUE_NAMES",
    "VENTRICLE",
    "WM",
    "BiasField",
    "Grid",
    "Head",
    "Lesion",
    "LesionSummary",
    "RigidMotion",
    "brain_mask",
    "lesion_summaries",
    "region_volumes",
    "render_case",
    "render_labels",
    "render_sequence",
    "render_tissues",
    "sample_bias_field",
    "sample_head",
    "sample_lesions",
    "sample_motion",
    "sequence_seed",
    "tissues_at_points",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
FloatLike = npt.NDArray[np.float32]

# --------------------------------------------------------------------------------------------------
# Codes and tables
# --------------------------------------------------------------------------------------------------
AIR = 0
SCALP = 1
SKULL = 2
CSF = 3
GM = 4
WM = 5
VENTRICLE = 6
DEEP_GM = 7
DURA = 8
SOFT_TISSUE = 9
EYE = 10
N_TISSUES = 11
TISSUE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        AIR: "air",
        SCALP: "scalp_fat",
        SKULL: "skull",
        CSF: "csf",
        GM: "gm",
        WM: "wm",
        VENTRICLE: "ventricle",
        DEEP_GM: "deep_gm",
        DURA: "dura",
        SOFT_TISSUE: "soft_tissue",
        EYE: "eye",
    }
)
INTRACRANIAL_TISSUES: tuple[int, ...] = (CSF, GM, WM, VENTRICLE, DEEP_GM, DURA)
PARENCHYMA_TISSUES: tuple[int, ...] = (GM, WM, DEEP_GM)

LABEL_NETC = 1
LABEL_SNFH = 2
LABEL_ET = 3

SEQUENCES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")

# Rows: tissue codes 0..10; columns: SEQUENCES order.
_TISSUE_INTENSITY = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # air
        [1.25, 1.25, 0.95, 0.85],  # scalp / fat
        [0.06, 0.07, 0.05, 0.05],  # skull
        [0.22, 0.24, 1.45, 0.10],  # CSF
        [0.62, 0.64, 0.72, 0.80],  # GM
        [0.88, 0.90, 0.50, 0.62],  # WM
        [0.20, 0.22, 1.50, 0.08],  # ventricles
        [0.70, 0.72, 0.62, 0.72],  # deep GM
        [0.30, 0.80, 0.20, 0.25],  # dura
        [0.52, 0.62, 0.38, 0.42],  # soft tissue
        [0.18, 0.19, 1.40, 0.10],  # eye
    ],
    dtype=np.float32,
)
# Rows: label codes 1 (NETC), 2 (SNFH), 3 (ET); columns: SEQUENCES order.
_LESION_INTENSITY = np.array(
    [
        [0.30, 0.28, 1.25, 0.80],  # NETC
        [0.55, 0.57, 1.10, 1.25],  # SNFH
        [0.62, 1.40, 0.85, 0.95],  # ET
    ],
    dtype=np.float32,
)
# Relative texture amplitude per tissue code (multiplies a unit-variance random field).
_TEXTURE_AMPLITUDE = np.array([0.0, 0.06, 0.10, 0.02, 0.03, 0.03, 0.02, 0.03, 0.05, 0.06, 0.02], dtype=np.float32)
_ET_TEXTURE = 0.30  # relative modulation of enhancing tissue per unit heterogeneity and field std
_NETC_TEXTURE = 0.15
_EDEMA_EDGE_WEIGHT = 0.6  # edema signal at the outer edge, as a fraction of its full value
#: relative change of the ET's t1c intensity per unit ``Lesion.enhancement`` (one SD of the latent)
ENHANCEMENT_AMPLITUDE = 0.15
_ENHANCEMENT_LIMIT = 3.0  # |Lesion.enhancement| <= this keeps the ET's t1c gain >= 0.55
_T1C_COLUMN = SEQUENCES.index("t1c")

# --------------------------------------------------------------------------------------------------
# Template anatomy (nominal millimetres, patient LPS; scaled per axis to each head)
# --------------------------------------------------------------------------------------------------
_NOMINAL_HEAD = (76.0, 95.0, 73.0)
_INFERIOR_RATIO = 1.15
_Y_ANT_MID = -28.0  # anterior / middle cranial fossa boundary
_Y_PF = -6.0  # middle / posterior fossa boundary (dorsum sellae, petrous ridges)
_Z_ANT_FLOOR = -20.0
_Z_MID_FLOOR_LATERAL = -44.0
_Z_MID_FLOOR_MEDIAL = -30.0
_Z_POST_FLOOR = -100.0  # no cut: the skull ellipsoid bounds the posterior fossa
_Z_TENT = -15.0
_TENT_WIDTH_MM = 2.5
_FOLIA_COUNT = 13.0  # fissures per half turn about the cerebellar axis
_CEREBELLUM_CENTRE = (0.0, 40.0, -40.0)
_BRAINSTEM_TOP = -4.0
_CISTERN_MM = 2.0
_CEREBELLAR_CORTEX_MM = 2.2
_CEREBELLAR_SULCUS_MM = 1.2
_CEREBELLAR_SULCAL_DEPTH_MM = 11.0
_FOLIA_MIN_RADIUS = 10.0
_FOLD_TABLE_DEG = 1.0  # angular resolution of the tabulated folding field on the brain envelope

# Lesion shape constants
_RIM_AMPLITUDE = 0.35  # radial perturbation of the tumour surface at rim_irregularity = 1
_CORE_AMPLITUDE = 0.25
_MIN_RIM_MM = 1.0  # thinnest enhancing rim around a necrotic core
_EDEMA_MODULATION = 0.35

for _table in (_TISSUE_INTENSITY, _LESION_INTENSITY, _TEXTURE_AMPLITUDE):
    _table.setflags(write=False)

_IDENTITY9: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------------
def _float3(name: str, value: Sequence[float]) -> tuple[float, float, float]:
    if len(value) != 3:
        raise ValueError(f"{name} must have 3 values (x, y, z), got {len(value)}: {tuple(value)!r}")
    out = (float(value[0]), float(value[1]), float(value[2]))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_sequence(sequence: str) -> int:
    if sequence not in SEQUENCES:
        raise ValueError(f"unknown sequence {sequence!r}; expected one of {SEQUENCES}")
    return SEQUENCES.index(sequence)


# --------------------------------------------------------------------------------------------------
# Grid and motion
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical (LPS, mm) space, with SimpleITK's conventions.

    ``size`` is ``(nx, ny, nz)``; ``spacing`` in mm; ``origin`` is the physical position (mm) of
    voxel index ``(0, 0, 0)``; ``direction`` is the row-major 3x3 direction cosine matrix ``D``
    (orthonormal; flips allowed). The physical point of index ``(i, j, k)`` is
    ``origin + D @ (spacing * [i, j, k])``. Arrays on the grid have numpy shape ``(nz, ny, nx)``.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY9

    def __post_init__(self) -> None:
        if len(self.size) != 3:
            raise ValueError(f"size must have 3 values (nx, ny, nz), got {self.size!r}")
        size = tuple(int(v) for v in self.size)
        if any(v <= 0 for v in size) or any(int(v) != v for v in self.size):
            raise ValueError(f"size must be 3 positive integers, got {self.size!r}")
        spacing = _float3("spacing", self.spacing)
        if any(v <= 0 for v in spacing):
            raise ValueError(f"spacing must be positive (mm), got {spacing!r}")
        origin = _float3("origin", self.origin)
        if len(self.direction) != 9:
            raise ValueError(f"direction must have 9 values (row-major 3x3), got {len(self.direction)}")
        direction = tuple(float(v) for v in self.direction)
        d = np.array(direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(d)) or not np.allclose(d @ d.T, np.eye(3), atol=1e-5):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {direction!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def centred(
        cls,
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        direction: tuple[float, ...] = _IDENTITY9,
    ) -> Grid:
        """A grid whose centre (continuous index ``(size - 1) / 2``) is the physical origin."""
        probe = cls(size=size, spacing=spacing, direction=direction)
        half = (np.array(probe.size, dtype=np.float64) - 1.0) / 2.0
        origin = -(probe.direction_matrix() @ (np.array(probe.spacing) * half))
        return cls(
            size=probe.size,
            spacing=probe.spacing,
            origin=_float3("origin", origin.tolist()),
            direction=probe.direction,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Numpy array shape ``(nz, ny, nx)``."""
        return (self.size[2], self.size[1], self.size[0])

    def direction_matrix(self) -> F64:
        """The 3x3 direction matrix ``D``."""
        return np.array(self.direction, dtype=np.float64).reshape(3, 3)

    def index_matrix(self) -> F64:
        """``D @ diag(spacing)``: physical displacement (mm) per unit of index ``(i, j, k)``."""
        return self.direction_matrix() * np.array(self.spacing, dtype=np.float64)[None, :]

    def index_to_physical(self, index: npt.ArrayLike) -> F64:
        """Physical points (mm, ``(..., 3)``) of continuous indices ``(..., 3)`` in ``(i, j, k)`` order."""
        idx = np.asarray(index, dtype=np.float64)
        out: F64 = np.array(self.origin) + idx @ self.index_matrix().T
        return out

    def physical_to_index(self, points: npt.ArrayLike) -> F64:
        """Continuous indices ``(i, j, k)`` of physical points (mm, ``(..., 3)``)."""
        pts = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.index_matrix())
        out: F64 = (pts - np.array(self.origin)) @ inv.T
        return out

    def physical_points(self, dtype: npt.DTypeLike = np.float32) -> F32 | F64:
        """Physical coordinates (mm) of every voxel centre, shape ``(nz, ny, nx, 3)`` (last axis x, y, z).

        ``dtype`` is float32 (default) or float64.
        """
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        nz, ny, nx = self.shape
        m = self.index_matrix()
        pts = (
            np.array(self.origin)
            + np.arange(nz, dtype=np.float64)[:, None, None, None] * m[:, 2]
            + np.arange(ny, dtype=np.float64)[None, :, None, None] * m[:, 1]
            + np.arange(nx, dtype=np.float64)[None, None, :, None] * m[:, 0]
        )
        if np.dtype(dtype) == np.dtype(np.float64):
            return pts
        return pts.astype(np.float32)


@dataclass(frozen=True)
class RigidMotion:
    """A rigid patient movement ``T(q) = R q + t`` about the head centre (the physical origin).

    ``rotation_deg`` are rotations about the x, y and z axes (degrees), composed as
    ``R = Rz @ Ry @ Rx``; ``translation_mm`` is ``t`` in mm. Rendering with a motion shows, at scanner
    point ``p``, the phantom at ``T^-1(p) = R^T (p - t)``.
    """

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation_deg", _float3("rotation_deg", self.rotation_deg))
        object.__setattr__(self, "translation_mm", _float3("translation_mm", self.translation_mm))

    @classmethod
    def identity(cls) -> RigidMotion:
        """No movement."""
        return cls((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

    def rotation_matrix(self) -> F64:
        """``R = Rz @ Ry @ Rx``."""
        ax, ay, az = (math.radians(v) for v in self.rotation_deg)
        cx, sx, cy, sy, cz, sz = (
            math.cos(ax),
            math.sin(ax),
            math.cos(ay),
            math.sin(ay),
            math.cos(az),
            math.sin(az),
        )
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=np.float64)
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=np.float64)
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=np.float64)
        return rz @ ry @ rx

    def apply(self, points: npt.ArrayLike) -> F64:
        """Where patient points (mm, ``(..., 3)``) end up after the movement: ``R q + t``."""
        q = np.asarray(points, dtype=np.float64)
        out: F64 = q @ self.rotation_matrix().T + np.array(self.translation_mm)
        return out

    def inverse_apply(self, points: npt.ArrayLike) -> F64:
        """The patient point seen at scanner points (mm, ``(..., 3)``): ``R^T (p - t)``."""
        p = np.asarray(points, dtype=np.float64)
        out: F64 = (p - np.array(self.translation_mm)) @ self.rotation_matrix()
        return out


def sample_motion(
    rng: np.random.Generator, max_rotation_deg: float = 3.0, max_translation_mm: float = 3.0
) -> RigidMotion:
    """A random small movement: each rotation (deg) and translation (mm) uniform in ``[-max, max]``."""
    if not (math.isfinite(max_rotation_deg) and max_rotation_deg >= 0):
        raise ValueError(f"max_rotation_deg must be >= 0, got {max_rotation_deg!r}")
    if not (math.isfinite(max_translation_mm) and max_translation_mm >= 0):
        raise ValueError(f"max_translation_mm must be >= 0, got {max_translation_mm!r}")
    rot = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    tra = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return RigidMotion(_float3("rotation_deg", rot.tolist()), _float3("translation_mm", tra.tolist()))


# --------------------------------------------------------------------------------------------------
# Affine sampling maps and separable random fields
# --------------------------------------------------------------------------------------------------
class _AffineMap:
    """Patient-frame points of a voxel block: ``q(i, j, k) = c0 + A @ [i, j, k]``, shape ``(nz, ny, nx)``."""

    __slots__ = ("a", "c0", "shape")

    def __init__(self, c0: F64, a: F64, shape: tuple[int, int, int]) -> None:
        self.c0 = np.asarray(c0, dtype=np.float64)
        self.a = np.asarray(a, dtype=np.float64)
        self.shape = shape

    def coordinates(self) -> tuple[F32, F32, F32]:
        """x, y, z (mm) of every voxel, each of shape ``(nz, ny, nx)``, float32."""
        nz, ny, nx = self.shape
        ii = np.arange(nx, dtype=np.float64)
        jj = np.arange(ny, dtype=np.float64)
        kk = np.arange(nz, dtype=np.float64)
        out: list[F32] = []
        for d in range(3):
            row = self.a[d]
            plane = (self.c0[d] + row[1] * jj[:, None] + row[0] * ii[None, :]).astype(np.float32)
            col = (row[2] * kk).astype(np.float32)
            out.append(np.add(col[:, None, None], plane[None, :, :], dtype=np.float32))
        return out[0], out[1], out[2]

    def crop(self, box: tuple[int, int, int, int, int, int]) -> _AffineMap:
        """The sub-block ``[k0:k1, j0:j1, i0:i1]``."""
        k0, k1, j0, j1, i0, i1 = box
        c0 = self.c0 + self.a @ np.array([i0, j0, k0], dtype=np.float64)
        return _AffineMap(c0, self.a, (k1 - k0, j1 - j0, i1 - i0))

    def index_box(self, centre: F64, half_extent: F64) -> tuple[int, int, int, int, int, int] | None:
        """Voxel block covering the axis-aligned patient box ``centre +- half_extent`` (mm), clipped."""
        inv = np.linalg.inv(self.a)
        corners = (
            np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
            * half_extent
            + centre
        )
        idx = (corners - self.c0) @ inv.T
        lo = np.floor(idx.min(axis=0)).astype(int)
        hi = np.ceil(idx.max(axis=0)).astype(int) + 1
        nz, ny, nx = self.shape
        i0, j0, k0 = (max(int(v), 0) for v in lo)
        i1, j1, k1 = min(int(hi[0]), nx), min(int(hi[1]), ny), min(int(hi[2]), nz)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return (k0, k1, j0, j1, i0, i1)

    def ball_box(self, centre: F64, radius: float) -> tuple[int, int, int, int, int, int] | None:
        """Voxel block covering a patient-frame ball (tighter than its bounding box when rotated)."""
        inv = np.linalg.inv(self.a)
        idx = inv @ (centre - self.c0)
        half = radius * np.linalg.norm(inv, axis=1)
        lo = np.floor(idx - half).astype(int)
        hi = np.ceil(idx + half).astype(int) + 1
        nz, ny, nx = self.shape
        i0, j0, k0 = (max(int(v), 0) for v in lo)
        i1, j1, k1 = min(int(hi[0]), nx), min(int(hi[1]), ny), min(int(hi[2]), nz)
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            return None
        return (k0, k1, j0, j1, i0, i1)


def _grid_map(
    grid: Grid, motion: RigidMotion | None, offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> _AffineMap:
    """Map from grid index (shifted by ``offset`` voxels) to patient-frame points under ``motion``."""
    m = grid.index_matrix()
    o = np.array(grid.origin, dtype=np.float64) + m @ np.array(offset, dtype=np.float64)
    if motion is None:
        return _AffineMap(o, m, grid.shape)
    r = motion.rotation_matrix()
    t = np.array(motion.translation_mm, dtype=np.float64)
    return _AffineMap(r.T @ (o - t), r.T @ m, grid.shape)


@dataclass(frozen=True)
class _CosineField:
    """``f(p) = sum_m amp_m cos(k_m . p + phase_m)``; ``k`` in rad/mm, shape ``(M, 3)``."""

    k: F64
    phase: F64
    amp: F64

    def rms_wavenumber(self) -> float:
        """sqrt(mean |k|^2) (rad/mm): |f| / this approximates the distance to the zero set (mm)."""
        return float(np.sqrt(np.mean(np.sum(self.k**2, axis=1))))


def _make_field(
    rng: np.random.Generator,
    n: int,
    wavelength_mm: tuple[float, float],
    *,
    bounded: bool,
    anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> _CosineField:
    """A random cosine field: unit variance, or (``bounded``) convex weights so ``|f| <= 1``."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    lam = rng.uniform(wavelength_mm[0], wavelength_mm[1], n)
    k = v * (2.0 * np.pi / lam)[:, None] * np.array(anisotropy)[None, :]
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    if bounded:
        w = rng.uniform(0.5, 1.0, n)
        amp = w / w.sum()
    else:
        amp = np.full(n, math.sqrt(2.0 / n))
    return _CosineField(k=k, phase=phase, amp=amp)


def _field_on_map(f: _CosineField, amap: _AffineMap) -> F32:
    """Evaluate a cosine field on an affine voxel block, separably: one (nz x 2M) @ (2M x ny*nx) product."""
    nz, ny, nx = amap.shape
    b = f.k @ amap.a  # phase increment per unit index, (M, 3)
    ph0 = f.k @ amap.c0 + f.phase
    ex = np.exp(1j * (b[:, 0:1] * np.arange(nx)[None, :]))
    ey = np.exp(1j * (b[:, 1:2] * np.arange(ny)[None, :]))
    ez = f.amp[:, None] * np.exp(1j * (ph0[:, None] + b[:, 2:3] * np.arange(nz)[None, :]))
    plane = (ey[:, :, None] * ex[:, None, :]).reshape(len(f.amp), ny * nx).astype(np.complex64)
    left = np.concatenate([ez.real, -ez.imag], axis=0).T.astype(np.float32)  # (nz, 2M)
    right = np.concatenate([plane.real, plane.imag], axis=0)  # (2M, ny*nx)
    out: F32 = (left @ right).reshape(nz, ny, nx)
    return out


def _field_at(f: _CosineField, x: FloatLike, y: FloatLike, z: FloatLike, chunk: int = 65536) -> F32:
    """Evaluate a cosine field at scattered points (flat arrays, mm)."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.float32)
    kt = f.k.T.astype(np.float32)
    ph = f.phase.astype(np.float32)
    amp = f.amp.astype(np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        arg = np.stack([x[s:e], y[s:e], z[s:e]], axis=1).astype(np.float32, copy=False) @ kt
        arg += ph
        np.cos(arg, out=arg)
        out[s:e] = arg @ amp
    return out


class _Samples:
    """Flat patient-frame points plus lazily evaluated head fields at (subsets of) them."""

    def __init__(self, x: F32, y: F32, z: F32, amap: _AffineMap | None) -> None:
        self.x = x
        self.y = y
        self.z = z
        self._amap = amap
        self._cache: dict[str, F32] = {}

    @classmethod
    def from_map(cls, amap: _AffineMap) -> _Samples:
        x, y, z = amap.coordinates()
        return cls(x.ravel(), y.ravel(), z.ravel(), amap)

    @classmethod
    def from_points(cls, points: npt.ArrayLike) -> _Samples:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        p32 = p.astype(np.float32)
        return cls(p32[:, 0].copy(), p32[:, 1].copy(), p32[:, 2].copy(), None)

    def field(self, name: str, f: _CosineField, sel: IntArray) -> F32:
        """Field ``f`` at the points ``sel`` (indices into the flat arrays)."""
        if self._amap is not None:
            if name not in self._cache:
                self._cache[name] = _field_on_map(f, self._amap).ravel()
            return self._cache[name][sel]
        return _field_at(f, self.x[sel], self.y[sel], self.z[sel])


# --------------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------------
_FIELD_FOLD = 1
_FIELD_LOW = 2
_FIELD_MID = 3
_FIELD_TEXTURE = 4
_FIELD_FOLIA = 5
_BRAIN_TEMPLATE = (65.0, 84.0, 62.0)  # template brain envelope semi-axes (mm)


@dataclass(frozen=True)
class Head:
    """One patient's anatomy: scalar parameters and an integer seed (cheap, picklable).

    ``semi_axes_mm`` are the outer (skin) head semi-axes along x, y and z (superior; the inferior
    semi-axis is 1.15 times longer). Thicknesses are mm; ``ventricle_scale`` scales ventricle
    widths (1 = young adult); ``seed`` derives every random field of the anatomy.
    """

    semi_axes_mm: tuple[float, float, float]
    scalp_mm: float
    skull_mm: float
    csf_mm: float
    cortex_mm: float
    sulcal_depth_mm: float
    sulcal_width_mm: float
    fold_wavelength_mm: float
    fissure_mm: float
    ventricle_scale: float
    seed: int

    def __post_init__(self) -> None:
        axes = _float3("semi_axes_mm", self.semi_axes_mm)
        for v in axes:
            _check_range("semi_axes_mm", v, 40.0, 140.0)
        object.__setattr__(self, "semi_axes_mm", axes)
        _check_range("scalp_mm", self.scalp_mm, 1.0, 15.0)
        _check_range("skull_mm", self.skull_mm, 1.0, 15.0)
        _check_range("csf_mm", self.csf_mm, 0.5, 10.0)
        _check_range("cortex_mm", self.cortex_mm, 1.0, 6.0)
        _check_range("sulcal_depth_mm", self.sulcal_depth_mm, 0.0, 30.0)
        _check_range("sulcal_width_mm", self.sulcal_width_mm, 0.2, 6.0)
        _check_range("fold_wavelength_mm", self.fold_wavelength_mm, 8.0, 60.0)
        _check_range("fissure_mm", self.fissure_mm, 1.0, 10.0)
        _check_range("ventricle_scale", self.ventricle_scale, 0.3, 2.5)
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in (
            "scalp_mm",
            "skull_mm",
            "csf_mm",
            "cortex_mm",
            "sulcal_depth_mm",
            "sulcal_width_mm",
            "fold_wavelength_mm",
            "fissure_mm",
            "ventricle_scale",
        ):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "seed", int(self.seed))

    def is_infratentorial(self, points: npt.ArrayLike) -> BoolArray:
        """Whether patient-frame points (mm, ``(..., 3)``) lie below the tentorium (posterior fossa)."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {p.shape}")
        s = np.array(self.semi_axes_mm) / np.array(_NOMINAL_HEAD)
        qx, qy, qz = p[..., 0] / s[0], p[..., 1] / s[1], p[..., 2] / s[2]
        return np.asarray((qy > _Y_PF) & (qz < _tentorium_z(qx, qy)), dtype=np.bool_)


def sample_head(rng: np.random.Generator) -> Head:
    """A random adult head. An atrophy factor jointly widens CSF spaces, sulci and ventricles."""
    atrophy = float(rng.uniform(0.0, 1.0))
    return Head(
        semi_axes_mm=(float(rng.uniform(72, 80)), float(rng.uniform(90, 100)), float(rng.uniform(68, 78))),
        scalp_mm=float(rng.uniform(4.0, 6.5)),
        skull_mm=float(rng.uniform(5.0, 7.5)),
        csf_mm=1.0 + 1.5 * atrophy,
        cortex_mm=float(rng.uniform(2.3, 3.0)),
        sulcal_depth_mm=float(rng.uniform(10.0, 16.0)),
        sulcal_width_mm=1.2 + 1.0 * atrophy,
        fold_wavelength_mm=float(rng.uniform(15.0, 21.0)),
        fissure_mm=3.0 + 2.0 * atrophy,
        ventricle_scale=0.8 + 0.7 * atrophy + float(rng.uniform(-0.1, 0.1)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def _sigmoid(v: FloatLike) -> F32:
    out: F32 = (0.5 * (1.0 + np.tanh(0.5 * v))).astype(np.float32, copy=False)
    return out


def _tentorium_z(qx: FloatLike, qy: FloatLike) -> F32:
    """Template height (mm) of the tentorium: highest at the incisura, sloping back and sideways."""
    out: F32 = np.asarray(_Z_TENT - 0.2 * np.maximum(qy - 5.0, 0.0) - 0.005 * qx * qx, dtype=np.float32)
    return out


def _floor_z(qx: FloatLike, qy: FloatLike) -> F32:
    """Template height (mm) of the skull base (floor of the anterior, middle and posterior fossae)."""
    half = np.float32(0.5)
    medial = _sigmoid((np.float32(16.0) - np.abs(qx)) * half)
    z_mid = _Z_MID_FLOOR_LATERAL + (_Z_MID_FLOOR_MEDIAL - _Z_MID_FLOOR_LATERAL) * medial
    w_mid = _sigmoid((np.float32(_Y_PF) - qy) * half)
    w_ant = _sigmoid((np.float32(_Y_ANT_MID) - qy) * half)
    out: F32 = np.asarray(
        _Z_POST_FLOOR + (z_mid - _Z_POST_FLOOR) * w_mid + (_Z_ANT_FLOOR - z_mid) * w_ant, dtype=np.float32
    )
    return out


def _superellipsoid_depth(x: F32, y: F32, z: F32, a: float, b: float, c_sup: float, c_inf: float) -> F32:
    """Approximate depth (mm, positive inside) below the surface ``|x/a|^n + |y/b|^n + |z/c|^n = 1``.

    ``n = 2.5`` (a skull is boxier than an ellipsoid); ``c`` is ``c_sup`` above and ``c_inf`` below
    ``z = 0``. First-order distance ``(1 - f) / |grad f|`` with ``f`` the superellipsoid norm.
    """
    c = np.where(z >= 0, np.float32(c_sup), np.float32(c_inf))
    u, v, w = np.abs(x / np.float32(a)), np.abs(y / np.float32(b)), np.abs(z / c)
    su, sv, sw = np.sqrt(u), np.sqrt(v), np.sqrt(w)
    total = u * u * su + v * v * sv + w * w * sw  # |.|^2.5
    f = np.power(total, np.float32(0.4))
    # d f / d x_i = f^(1-n) |u_i|^(n-1) / a_i, with n - 1 = 1.5
    gu, gv, gw = u * su / np.float32(a), v * sv / np.float32(b), w * sw / c
    grad = np.sqrt(gu * gu + gv * gv + gw * gw) / np.maximum(f * np.sqrt(f), np.float32(1e-6))
    np.maximum(grad, np.float32(1e-6), out=grad)
    out: F32 = ((np.float32(1.0) - f) / grad).astype(np.float32, copy=False)
    return out


class _Anatomy:
    """Per-head derived constants and random fields (built on demand from a :class:`Head`)."""

    def __init__(self, head: Head) -> None:
        self.head = head
        a = np.array(head.semi_axes_mm, dtype=np.float64)
        self.semi = a
        self.az_inf = float(a[2] * _INFERIOR_RATIO)
        self.scale = a / np.array(_NOMINAL_HEAD)
        rng = np.random.default_rng([head.seed, _FIELD_FOLD])
        w = head.fold_wavelength_mm
        self.fold = _make_field(rng, 24, (0.8 * w, 1.25 * w), bounded=False)
        self.fold_krms = self.fold.rms_wavenumber()
        self._fold_table: F32 | None = None
        self.folia = _make_field(np.random.default_rng([head.seed, _FIELD_FOLIA]), 12, (20.0, 35.0), bounded=False)
        self.low = _make_field(np.random.default_rng([head.seed, _FIELD_LOW]), 10, (40.0, 90.0), bounded=False)
        self.mid = _make_field(np.random.default_rng([head.seed, _FIELD_MID]), 6, (60.0, 120.0), bounded=True)
        self.texture = _make_field(np.random.default_rng([head.seed, _FIELD_TEXTURE]), 30, (2.5, 8.0), bounded=False)

    # -- geometry helpers (patient-frame flat float32 arrays) --------------------------------------
    def template(self, x: F32, y: F32, z: F32) -> tuple[F32, F32, F32]:
        s = self.scale
        return x / np.float32(s[0]), y / np.float32(s[1]), z / np.float32(s[2])

    def fold_on_envelope(self, qx: F32, qy: F32, qz: F32) -> F32:
        """The folding field at template points pushed radially onto the template brain envelope.

        Constant along rays, so its zero set makes radial sulcal sheets. Read from a table over the
        envelope's direction angles (built once per instance, :data:`_FOLD_TABLE_DEG` resolution,
        bilinear), which is much cheaper than summing the cosines at every voxel.
        """
        if self._fold_table is None:
            self._fold_table = self._build_fold_table()
        bx, by, bz = _BRAIN_TEMPLATE
        u, v, w = qx / np.float32(bx), qy / np.float32(by), qz / np.float32(bz)
        re = np.maximum(np.sqrt(u * u + v * v + w * w), np.float32(1e-6))
        theta = np.arccos(np.clip(w / re, -1.0, 1.0))
        phi = np.arctan2(v, u)
        step = np.float32(math.radians(_FOLD_TABLE_DEG))
        coords = np.stack([theta / step, (phi + np.float32(math.pi)) / step])
        out: F32 = ndimage.map_coordinates(self._fold_table, coords, order=1, mode="nearest")
        return out

    def _build_fold_table(self) -> F32:
        n_theta = round(180.0 / _FOLD_TABLE_DEG) + 1
        n_phi = round(360.0 / _FOLD_TABLE_DEG) + 1
        theta = np.radians(np.arange(n_theta) * _FOLD_TABLE_DEG)[:, None]
        phi = np.radians(np.arange(n_phi) * _FOLD_TABLE_DEG - 180.0)[None, :]
        s = self.scale
        bx, by, bz = _BRAIN_TEMPLATE
        px = (np.sin(theta) * np.cos(phi) * bx * s[0]).astype(np.float32)
        py = (np.sin(theta) * np.sin(phi) * by * s[1]).astype(np.float32)
        pz = np.broadcast_to(np.cos(theta) * bz * s[2], px.shape).astype(np.float32)
        return _field_at(self.fold, px.ravel(), py.ravel(), pz.ravel()).reshape(n_theta, n_phi)

    def skin_depths(self, x: F32, y: F32, z: F32) -> tuple[F32, F32]:
        """(depth below the head ellipsoid, depth below the skin incl. neck), mm."""
        ax, ay, az = (float(v) for v in self.semi)
        d_ell = _superellipsoid_depth(x, y, z, ax, ay, az, self.az_inf)
        # Neck: elliptic cylinder below the skull, ending well below any field of view.
        nx_, ny_ = 0.68 * ax, 0.72 * ay
        yc = 0.15 * ay
        rho = np.sqrt((x / np.float32(nx_)) ** 2 + ((y - np.float32(yc)) / np.float32(ny_)) ** 2)
        d_neck = (np.float32(1.0) - rho) * np.float32(min(nx_, ny_))
        z_top, z_bot = -0.35 * self.az_inf, -self.az_inf - 80.0
        d_neck = np.minimum(d_neck, np.minimum(np.float32(z_top) - z, z - np.float32(z_bot)))
        return d_ell, np.maximum(d_ell, d_neck)

    def bounding_box(self) -> tuple[F64, F64]:
        """Patient-frame axis-aligned box (centre, half extent) containing the head and neck (mm)."""
        ax, ay, az = (float(v) for v in self.semi)
        lo = np.array([-ax, -ay, -self.az_inf - 80.0])
        hi = np.array([ax, ay, az])
        return (lo + hi) / 2.0, (hi - lo) / 2.0 + 1.0

    def thickness(self, low: F32) -> tuple[F32, F32, F32]:
        """Scalp, skull and subarachnoid CSF thickness (mm) modulated by the low-frequency field."""
        h = self.head
        lw = np.clip(low, -2.0, 2.0)
        t_sc = np.float32(h.scalp_mm) * (np.float32(1.0) + np.float32(0.15) * lw)
        t_sk = np.float32(h.skull_mm) * (np.float32(1.0) - np.float32(0.12) * lw)
        t_csf = np.float32(h.csf_mm) * (np.float32(1.0) + np.float32(0.25) * lw)
        return t_sc, t_sk, t_csf

    def intracranial_depth(self, smp: _Samples, sel: IntArray) -> F32:
        """Depth (mm, positive inside) below the inner skull surface / above the skull base."""
        x, y, z = smp.x[sel], smp.y[sel], smp.z[sel]
        d_ell, _ = self.skin_depths(x, y, z)
        t_sc, t_sk, _ = self.thickness(smp.field("low", self.low, sel))
        qx, qy, qz = self.template(x, y, z)
        above = (qz - _floor_z(qx, qy)) * np.float32(self.scale[2])
        out: F32 = np.minimum(d_ell - t_sc - t_sk, above)
        return out

    # -- tissue classification ---------------------------------------------------------------------
    def classify(self, smp: _Samples, junction: bool = False, within: IntArray | None = None) -> tuple[U8, F32]:
        """Tissue code of every sample point and, if ``junction``, its distance (mm) to the GM/WM junction.

        The distance is infinite outside GM/WM and 8 mm in deep grey nuclei; an empty array when not
        requested. With ``within`` (indices), only those points are classified; the rest read as air.
        """
        n = smp.x.shape[0]
        out = np.zeros(n, dtype=np.uint8)
        jd = np.full(n if junction else 0, np.inf, dtype=np.float32)
        base = np.arange(n) if within is None else within
        d_ell_all, d_skin_all = self.skin_depths(smp.x[base], smp.y[base], smp.z[base])
        keep = d_skin_all > 0
        i1 = base[keep]
        if i1.size == 0:
            return out, jd
        x, y, z = smp.x[i1], smp.y[i1], smp.z[i1]
        d_ell, d_skin = d_ell_all[keep], d_skin_all[keep]
        low = smp.field("low", self.low, i1)
        t_sc, t_sk, t_csf = self.thickness(low)
        qx, qy, qz = self.template(x, y, z)
        above = (qz - _floor_z(qx, qy)) * np.float32(self.scale[2])
        d_in = np.minimum(d_ell - t_sc - t_sk, above)

        tis = np.full(i1.size, SOFT_TISSUE, dtype=np.uint8)
        tis[(d_in > -t_sk) & (d_ell >= t_sc)] = SKULL
        tis[d_skin < t_sc] = SCALP
        self._face(tis, x, y, z, d_in)
        out[i1] = tis

        inside = d_in >= 0
        i2 = i1[inside]
        if i2.size:
            tis2, jd2 = self._intracranial(
                smp,
                i2,
                (qx[inside], qy[inside], qz[inside]),
                d_in[inside] - t_csf[inside],
                above[inside] < (d_ell - t_sc - t_sk)[inside],
                low[inside],
                junction,
            )
            out[i2] = tis2
            if junction:
                jd[i2] = jd2
        return out, jd

    def _face(self, tis: U8, x: F32, y: F32, z: F32, d_in: F32) -> None:
        """Eyes, orbital fat and air sinuses below the skull base (in place)."""
        ax, ay, _ = (float(v) for v in self.semi)
        s = self.scale
        extracranial = d_in < 0
        z_e = -42.0 * s[2]
        for side in (-1.0, 1.0):
            x_e = side * 31.0 * s[0]
            rad = 1.0 - (x_e / ax) ** 2 - (z_e / self.az_inf) ** 2
            y_e = -ay * math.sqrt(max(rad, 0.05)) + 14.0
            r2 = (x - np.float32(x_e)) ** 2 + (y - np.float32(y_e)) ** 2 + (z - np.float32(z_e)) ** 2
            tis[extracranial & (r2 < np.float32(17.0**2)) & (tis != SCALP)] = SCALP
            tis[extracranial & (r2 < np.float32(12.0**2))] = EYE
        qx, qy, qz = self.template(x, y, z)
        for cx, cy, cz, rx, ry, rz in (
            (0.0, -55.0, -50.0, 14.0, 14.0, 13.0),
            (0.0, -18.0, -43.0, 10.0, 9.0, 7.0),
        ):
            e = ((qx - cx) / rx) ** 2 + ((qy - cy) / ry) ** 2 + ((qz - cz) / rz) ** 2
            tis[extracranial & (e < 1.0) & (tis != SCALP) & (tis != EYE)] = AIR

    def _intracranial(
        self,
        smp: _Samples,
        sel: IntArray,
        q: tuple[F32, F32, F32],
        c0: F32,
        on_floor: BoolArray,
        low: F32,
        junction: bool,
    ) -> tuple[U8, F32]:
        """Tissue codes inside the skull (and GM/WM junction distances, as in :meth:`classify`).

        ``q``: template coordinates; ``c0``: depth (mm) below the outer CSF layer; ``on_floor``: the
        nearest outer surface is the skull base rather than the vault.
        """
        qx, qy, qz = q
        lw = np.clip(low, -1.5, 1.5)
        infra, d_tent = self._posterior_fossa(qx, qy, qz)
        fiss_region, x_mid, d_fiss = self._fissure(smp, sel, qy, qz, infra)
        # c: depth (mm) below the nearest CSF surface of the brain envelope, fissure or tentorium.
        c = np.minimum(np.minimum(c0, d_tent - np.float32(_TENT_WIDTH_MM / 2)), d_fiss)
        dura = (d_tent < 0.5) | (fiss_region & (np.abs(smp.x[sel] - x_mid) < 0.5))
        d_bs = _brainstem_depth(qx, qy, qz)

        # delta: depth (mm) below the nearest CSF, sulci included; GM where delta < cortex thickness.
        delta = c.copy()
        gm_thick = np.full_like(c, _CEREBELLAR_CORTEX_MM)
        sup = np.flatnonzero(~infra)
        if sup.size:
            gm_thick[sup] = np.float32(self.head.cortex_mm) * (np.float32(1.0) - np.float32(0.12) * lw[sup])
            flat = (on_floor & (c0 <= c + 1e-3)) | (d_tent - np.float32(_TENT_WIDTH_MM / 2) <= c)
            medial = d_fiss <= c
            delta[sup] = self._cerebral_sulci(
                smp, sel[sup], q, sup, c[sup], lw[sup], gm_thick[sup], flat[sup], medial[sup], x_mid[sup]
            )
        inf = np.flatnonzero(infra)
        if inf.size:
            cc = np.minimum(c[inf], -d_bs[inf] - np.float32(_CISTERN_MM))
            delta[inf] = self._cerebellar_folia(smp, sel[inf], qy[inf], qz[inf], cc)

        tis = np.where(delta < 0, np.uint8(CSF), np.where(delta < gm_thick, np.uint8(GM), np.uint8(WM)))
        tis = tis.astype(np.uint8, copy=False)
        tis[dura & (c < 0)] = DURA
        tis[infra & (d_bs > -_CISTERN_MM) & (c0 >= 0)] = CSF
        tis[(d_bs > 0) & (c0 >= -1.0)] = WM
        tis[_deep_grey(qx, qy, qz) & (c0 > 0)] = DEEP_GM
        tis[_ventricles(qx, qy, qz, self.head.ventricle_scale)] = VENTRICLE

        jd = np.zeros(0, dtype=np.float32)
        if junction:
            on_gm_wm = (tis == GM) | (tis == WM)
            jd = np.where(on_gm_wm, np.abs(delta - gm_thick), np.float32(np.inf)).astype(np.float32)
            jd[tis == DEEP_GM] = np.float32(8.0)
        return tis, jd

    def _posterior_fossa(self, qx: F32, qy: F32, qz: F32) -> tuple[BoolArray, F32]:
        """Infratentorial flag and unsigned distance (mm) to the compartment boundary.

        The boundary is the tentorium above and the petrous / clival plane ``y = _Y_PF`` in front.
        """
        s = self.scale
        dz = (_tentorium_z(qx, qy) - qz) * np.float32(s[2])
        dy = (qy - np.float32(_Y_PF)) * np.float32(s[1])
        infra = (dz > 0) & (dy > 0)
        outside = np.where(dy > 0, -dz, np.where(dz > 0, -dy, np.sqrt(dz * dz + dy * dy)))
        d_tent: F32 = np.abs(np.where(infra, np.minimum(dz, dy), outside)).astype(np.float32)
        return infra, d_tent

    def _fissure(self, smp: _Samples, sel: IntArray, qy: F32, qz: F32, infra: BoolArray) -> tuple[BoolArray, F32, F32]:
        """Interhemispheric fissure above the corpus callosum: (region, midline x in mm, depth in mm).

        The depth is the distance (mm) from the fissure's CSF, infinite outside its region.
        """
        v = np.float32(self.head.ventricle_scale)
        y_rel = qy - np.float32(2.0)
        z_floor = (
            np.float32(19.0)
            + np.float32(6.0) * v
            - np.float32(0.006) * y_rel * y_rel
            - np.float32(80.0) * _sigmoid((np.abs(y_rel) - np.float32(36.0)) * np.float32(0.5))
        )
        region = (~infra) & (qz > z_floor)
        x_mid = np.float32(2.0) * smp.field("mid", self.mid, sel)
        half = np.float32(self.head.fissure_mm / 2)
        d_fiss = np.where(region, np.abs(smp.x[sel] - x_mid) - half, np.float32(np.inf)).astype(np.float32)
        return region, x_mid, d_fiss

    def _cerebral_sulci(
        self,
        smp: _Samples,
        sel: IntArray,
        q: tuple[F32, F32, F32],
        sub: IntArray,
        c: F32,
        lw: F32,
        gm_thick: F32,
        flat: BoolArray,
        medial: BoolArray,
        x_mid: F32,
    ) -> F32:
        """Depth (mm) below the nearest CSF for supratentorial points, sulci included.

        Sulci are CSF sheets on the zero set of the folding field, evaluated on the brain surface and
        extruded along its normal: points are projected radially onto the envelope (convexity),
        vertically (skull base, tentorium: ``flat``) or across the midline (``medial``).
        """
        h = self.head
        delta = c.copy()
        depth = np.float32(h.sulcal_depth_mm) * (np.float32(1.0) + np.float32(0.3) * lw)
        near = np.flatnonzero(c < depth + gm_thick + np.float32(h.sulcal_width_mm))
        if near.size == 0:
            return delta
        qx, qy, qz = (a[sub[near]] for a in q)
        g = self.fold_on_envelope(qx, qy, qz)
        fl, md = flat[near], medial[near]
        other = np.flatnonzero(fl | md)
        if other.size:
            pick = sel[near[other]]
            xs, ys, zs = smp.x[pick], smp.y[pick], smp.z[pick]
            md_o = md[other]
            side = np.where(xs >= x_mid[near[other]], np.float32(40.0), np.float32(-40.0))
            px = np.where(md_o, side, xs)
            pz = np.where(md_o, zs, np.float32(-70.0))
            g[other] = _field_at(self.fold, px, ys, pz)
        dist = np.abs(g) / np.float32(self.fold_krms)
        deep = np.maximum(c[near] - depth[near], 0)
        sig = np.sqrt(dist * dist + deep * deep)
        delta[near] = np.minimum(c[near], sig - np.float32(h.sulcal_width_mm / 2))
        return delta

    def _cerebellar_folia(self, smp: _Samples, sel: IntArray, qy: F32, qz: F32, cc: F32) -> F32:
        """Depth (mm) below the nearest CSF for cerebellar points (``cc``: depth without folia).

        Fissures are sheets of constant angle about a transverse axis through the cerebellar centre
        (a fan on sagittal slices, arcs on axial and coronal ones), warped by a random field, and
        stop short of the white-matter core.
        """
        vy = qy - np.float32(_CEREBELLUM_CENTRE[1])
        vz = qz - np.float32(_CEREBELLUM_CENTRE[2])
        r = np.sqrt(vy * vy + vz * vz)
        warp = np.float32(1.5) * smp.field("folia", self.folia, sel)
        phase = np.float32(_FOLIA_COUNT) * np.arctan2(vz, vy) + warp
        dist = np.abs(np.arcsin(np.sin(phase))) / np.float32(_FOLIA_COUNT) * r
        deep = np.maximum(cc - np.float32(_CEREBELLAR_SULCAL_DEPTH_MM), 0)
        hub = np.maximum(np.float32(_FOLIA_MIN_RADIUS) - r, 0)
        sig = np.sqrt(dist * dist + deep * deep + hub * hub)
        out: F32 = np.minimum(cc, sig - np.float32(_CEREBELLAR_SULCUS_MM / 2))
        return out


def _brainstem_depth(qx: F32, qy: F32, qz: F32) -> F32:
    """Depth (mm, positive inside) in the brainstem: a tilted elliptic cylinder with the pontine bulge."""
    one = np.float32(1.0)
    bulge = np.exp(-(((qz + np.float32(32.0)) / np.float32(9.0)) ** 2))
    yc = np.float32(16.0) - np.float32(0.3) * (qz + np.float32(35.0)) - np.float32(4.0) * bulge
    rx = np.float32(11.0) + np.float32(4.0) * bulge
    ry = np.float32(9.0) + np.float32(5.0) * bulge
    rho = np.sqrt((qx / rx) ** 2 + ((qy - yc) / ry) ** 2)
    out: F32 = np.minimum((one - rho) * np.minimum(rx, ry), np.float32(_BRAINSTEM_TOP) - qz)
    return out


def _deep_grey(qx: F32, qy: F32, qz: F32) -> BoolArray:
    """Caudate heads, thalami and lentiform nuclei (ellipsoids mirrored about the midline)."""
    ax = np.abs(qx)
    out = np.zeros(qx.shape, dtype=np.bool_)
    for cx, cy, cz, sx, sy, sz in (
        (13.0, -18.0, 12.0, 5.0, 11.0, 8.0),  # caudate head
        (9.5, 10.0, 2.0, 8.5, 15.0, 10.0),  # thalamus
        (27.0, -2.0, 1.0, 6.5, 17.0, 11.0),  # lentiform nucleus
    ):
        out |= ((ax - cx) / sx) ** 2 + ((qy - cy) / sy) ** 2 + ((qz - cz) / sz) ** 2 < 1.0
    return out


def _ventricles(qx: F32, qy: F32, qz: F32, scale: float) -> BoolArray:
    """Lateral ventricles (arched, diverging posteriorly, width x ``scale``), third and fourth."""
    one = np.float32(1.0)
    v = np.float32(scale)
    ax = np.abs(qx)
    yy = qy - np.float32(2.0)
    zz = qz - np.float32(14.0) + np.float32(0.006) * yy * yy
    half_width = np.float32(4.5) * v * (one + np.float32(0.25) * yy / np.float32(30.0))
    xc = np.float32(2.0) + half_width + np.float32(0.08) * np.maximum(yy, 0)
    half_length = np.float32(30.0) + np.float32(3.0) * v
    lateral = ((ax - xc) / half_width) ** 2 + (yy / half_length) ** 2 + (zz / (np.float32(6.0) * v)) ** 2 < 1.0
    third = (qx / (np.float32(1.5) * v)) ** 2 + ((qy - 6.0) / 12.0) ** 2 + ((qz + 2.0) / 8.0) ** 2 < 1.0
    fourth = (qx / 6.0) ** 2 + ((qy - 22.0) / 3.5) ** 2 + ((qz + 30.0) / 8.0) ** 2 < 1.0
    out: BoolArray = lateral | third | fourth
    return out


def _render_tissue_map(anat: _Anatomy, amap: _AffineMap, within: BoolArray | None = None) -> U8:
    """Tissue codes on an affine voxel block; only the part that can contain the head is evaluated.

    With ``within`` (a mask on the block) only those voxels are classified; the rest read as air.
    """
    if within is not None:
        tis_within, _ = anat.classify(_Samples.from_map(amap), within=np.flatnonzero(within))
        return tis_within.reshape(amap.shape)
    out = np.zeros(amap.shape, dtype=np.uint8)
    centre, half = anat.bounding_box()
    box = amap.index_box(centre, half)
    if box is None:
        return out
    sub = amap.crop(box)
    tis, _ = anat.classify(_Samples.from_map(sub))
    k0, k1, j0, j1, i0, i1 = box
    out[k0:k1, j0:j1, i0:i1] = tis.reshape(sub.shape)
    return out


def tissues_at_points(head: Head, points: npt.ArrayLike) -> U8:
    """Tissue codes at patient-frame points (mm, ``(..., 3)``), same shape without the last axis."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    tis, _ = _Anatomy(head).classify(_Samples.from_points(p))
    return tis.reshape(p.shape[:-1])


def render_tissues(head: Head, grid: Grid, motion: RigidMotion | None = None) -> U8:
    """Tissue code map (uint8, ``(nz, ny, nx)``) of the head on a grid, sampled at voxel centres."""
    return _render_tissue_map(_Anatomy(head), _grid_map(grid, motion))


def brain_mask(head: Head, grid: Grid, motion: RigidMotion | None = None) -> BoolArray:
    """Skull-stripping mask: intracranial CSF, brain tissue, ventricles and falx/tentorium (and tumours)."""
    return np.isin(render_tissues(head, grid, motion), INTRACRANIAL_TISSUES)


# --------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lesion:
    """A metastasis in the patient frame.

    ``centre_mm`` (LPS mm); ``radius_mm``: mean outer radius of the enhancing tumour; ``necrosis_fraction``
    in [0, 0.85]: necrotic-core radius / radius (0 = solid nodule); ``rim_irregularity`` in [0, 1]:
    amplitude of a low-order random radial perturbation (0 = sphere, 1 = lobulated, +-35 % radius);
    ``heterogeneity`` in [0, 1]: amplitude of the enhancing-tissue texture; ``edema_mm`` >= 0: how far
    edema reaches beyond the tumour (in white matter; cortex mostly spared); ``shape_seed`` seeds the
    lesion's random fields; ``enhancement`` in [-3, 3]: contrast enhancement in standard deviations of
    a latent (0 = the intensity table's ET on t1c), which multiplies the ET's t1c intensity by
    ``1 + ENHANCEMENT_AMPLITUDE * enhancement`` and changes nothing else (shape, labels, volumes).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    necrosis_fraction: float = 0.0
    rim_irregularity: float = 0.0
    heterogeneity: float = 0.0
    edema_mm: float = 0.0
    shape_seed: int = 0
    enhancement: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "centre_mm", _float3("centre_mm", self.centre_mm))
        _check_positive("radius_mm", self.radius_mm)
        _check_range("necrosis_fraction", self.necrosis_fraction, 0.0, 0.85)
        _check_range("rim_irregularity", self.rim_irregularity, 0.0, 1.0)
        _check_range("heterogeneity", self.heterogeneity, 0.0, 1.0)
        _check_range("enhancement", self.enhancement, -_ENHANCEMENT_LIMIT, _ENHANCEMENT_LIMIT)
        if not (math.isfinite(self.edema_mm) and self.edema_mm >= 0):
            raise ValueError(f"edema_mm must be >= 0, got {self.edema_mm!r}")
        if int(self.shape_seed) != self.shape_seed or self.shape_seed < 0:
            raise ValueError(f"shape_seed must be a non-negative integer, got {self.shape_seed!r}")
        for name in ("radius_mm", "necrosis_fraction", "rim_irregularity", "heterogeneity", "edema_mm", "enhancement"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "shape_seed", int(self.shape_seed))

    @property
    def max_radius_mm(self) -> float:
        """Largest distance (mm) of the tumour surface from the centre."""
        return self.radius_mm * (1.0 + _RIM_AMPLITUDE * self.rim_irregularity)

    @property
    def influence_radius_mm(self) -> float:
        """Largest distance (mm) from the centre at which the lesion can label anything (incl. edema)."""
        return self.max_radius_mm + self.edema_mm * (1.0 + _EDEMA_MODULATION) + 0.5


@dataclass(frozen=True)
class _LesionShape:
    rim: _CosineField  # on unit directions, |f| <= 1
    core: _CosineField
    texture: _CosineField  # mm, unit variance
    edema: _CosineField  # mm, |f| <= 1

    @classmethod
    def of(cls, lesion: Lesion) -> _LesionShape:
        rng = np.random.default_rng([lesion.shape_seed, 7])
        ang = (2.0 * np.pi / 3.5, 2.0 * np.pi / 1.5)  # |k| in [1.5, 3.5] rad per unit direction
        return cls(
            rim=_make_field(rng, 6, ang, bounded=True),
            core=_make_field(rng, 6, ang, bounded=True),
            texture=_make_field(rng, 16, (3.0, 8.0), bounded=False),
            edema=_make_field(rng, 8, (12.0, 30.0), bounded=True),
        )

    def surface_radius(self, lesion: Lesion, ux: F32, uy: F32, uz: F32) -> F32:
        """Tumour radius (mm) along unit directions."""
        bump = np.float32(_RIM_AMPLITUDE * lesion.rim_irregularity) * _field_at(self.rim, ux, uy, uz)
        out: F32 = np.float32(lesion.radius_mm) * (np.float32(1.0) + bump)
        return out

    def core_radius(self, lesion: Lesion, ux: F32, uy: F32, uz: F32, r_s: F32) -> F32:
        """Necrotic-core radius (mm) along unit directions, given the tumour radius there."""
        if lesion.necrosis_fraction <= 0:
            return np.zeros_like(r_s)
        bump = np.float32(_CORE_AMPLITUDE * lesion.rim_irregularity) * _field_at(self.core, ux, uy, uz)
        r_c = np.float32(lesion.necrosis_fraction) * r_s * (np.float32(1.0) + bump)
        out: F32 = np.clip(r_c, 0.0, r_s - np.float32(_MIN_RIM_MM)).astype(np.float32)
        return out


@dataclass
class _LesionLayers:
    """Per-voxel lesion rendering on a block: labels plus intensity modulators."""

    labels: U8
    texture: F32  # relative modulation of tumour tissue (already scaled by heterogeneity)
    edema_weight: F32  # 1 at the tumour surface down to _EDEMA_EDGE_WEIGHT at the edema edge
    enhancement: F32  # relative t1c gain - 1 of the tumour's enhancing tissue (its lesion's amplitude * z)


_PRIORITY_TO_LABEL = np.array([0, LABEL_SNFH, LABEL_NETC, LABEL_ET], dtype=np.uint8)
_PRIORITY_TO_LABEL.setflags(write=False)


def _rasterise_lesion(lesion: Lesion, sub: _AffineMap, tis: U8, with_modulators: bool) -> tuple[U8, F32, F32]:
    """One lesion on a block: priorities (0 none, 1 SNFH, 2 NETC, 3 ET), tumour texture, edema weight.

    Shapes are evaluated only inside the lesion's ball of influence; the modulators are empty arrays
    unless ``with_modulators``.
    """
    x, y, z = sub.coordinates()
    c = lesion.centre_mm
    dx, dy, dz = (
        (x - np.float32(c[0])).ravel(),
        (y - np.float32(c[1])).ravel(),
        (z - np.float32(c[2])).ravel(),
    )
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    n = r.shape[0]
    prio = np.zeros(n, dtype=np.uint8)
    tex = np.zeros(n if with_modulators else 0, dtype=np.float32)
    edw = np.zeros(n if with_modulators else 0, dtype=np.float32)
    ball = np.flatnonzero(r < np.float32(lesion.influence_radius_mm))
    rb = r[ball]
    inv = np.float32(1.0) / np.maximum(rb, np.float32(1e-6))
    ux, uy, uz = dx[ball] * inv, dy[ball] * inv, dz[ball] * inv
    shape = _LesionShape.of(lesion)
    r_s = shape.surface_radius(lesion, ux, uy, uz)
    inside = rb < r_s
    t_idx = ball[inside]
    r_c = shape.core_radius(lesion, ux[inside], uy[inside], uz[inside], r_s[inside])
    core = rb[inside] < r_c
    prio[t_idx] = np.where(core, np.uint8(2), np.uint8(3))
    if lesion.edema_mm > 0:
        beyond = rb - r_s
        cand = (~inside) & (beyond < np.float32(lesion.edema_mm * (1.0 + _EDEMA_MODULATION)))
        e_idx = ball[cand]
        out = beyond[cand]
        modulation = _field_on_map(shape.edema, sub).ravel()[e_idx]
        e_eff = np.float32(lesion.edema_mm) * (np.float32(1.0) + np.float32(_EDEMA_MODULATION) * modulation)
        t = tis.ravel()[e_idx]
        allowed = (
            (t == WM)
            | ((t == DEEP_GM) & (out < np.float32(0.6) * e_eff))
            | ((t == GM) & (out < np.minimum(np.float32(2.0), e_eff)))
        )
        edema = allowed & (out < e_eff)
        prio[e_idx[edema]] = 1
        if with_modulators:
            fade = out[edema] / np.maximum(e_eff[edema], np.float32(1e-3))
            edw[e_idx[edema]] = np.float32(1.0) - np.float32(1.0 - _EDEMA_EDGE_WEIGHT) * fade
    if with_modulators and t_idx.size:
        texture = _field_at(shape.texture, x.ravel()[t_idx], y.ravel()[t_idx], z.ravel()[t_idx])
        amp = np.where(core, np.float32(_NETC_TEXTURE), np.float32(_ET_TEXTURE))
        tex[t_idx] = np.float32(lesion.heterogeneity) * amp * np.clip(texture, -2.5, 2.5)
    return prio.reshape(sub.shape), tex, edw


def _render_lesions(lesions: Sequence[Lesion], amap: _AffineMap, tissue: U8, with_modulators: bool) -> _LesionLayers:
    """Rasterise lesions on ``amap`` (tissue codes on the same block restrict the edema)."""
    prio = np.zeros(amap.shape, dtype=np.uint8)  # 0 none, 1 SNFH, 2 NETC, 3 ET
    shape = amap.shape if with_modulators else (1, 1, 1)
    tex = np.zeros(shape, dtype=np.float32)
    edw = np.zeros(shape, dtype=np.float32)
    enh = np.zeros(shape, dtype=np.float32)
    for lesion in lesions:
        box = amap.ball_box(np.array(lesion.centre_mm), lesion.influence_radius_mm)
        if box is None:
            continue
        k0, k1, j0, j1, i0, i1 = box
        sub = amap.crop(box)
        p, t, w = _rasterise_lesion(lesion, sub, tissue[k0:k1, j0:j1, i0:i1], with_modulators)
        pview = prio[k0:k1, j0:j1, i0:i1]
        np.maximum(pview, p, out=pview)
        if with_modulators:
            tumour = p >= 2
            tview = tex[k0:k1, j0:j1, i0:i1]
            tview[tumour] = t.reshape(sub.shape)[tumour]
            if lesion.enhancement != 0.0:
                enh[k0:k1, j0:j1, i0:i1][tumour] = np.float32(ENHANCEMENT_AMPLITUDE * lesion.enhancement)
            wview = edw[k0:k1, j0:j1, i0:i1]
            np.maximum(wview, w.reshape(sub.shape), out=wview)
    return _LesionLayers(labels=_PRIORITY_TO_LABEL[prio], texture=tex, edema_weight=edw, enhancement=enh)


def render_labels(head: Head, lesions: Sequence[Lesion], grid: Grid, motion: RigidMotion | None = None) -> U8:
    """Canonical segmentation (uint8, ``(nz, ny, nx)``): 0 background, 1 NETC, 2 SNFH, 3 ET.

    Sampled at voxel centres (no partial volume). Tumour beats edema; ET beats NETC.
    """
    amap = _grid_map(grid, motion)
    tissue = _render_tissue_map(_Anatomy(head), amap)
    return _render_lesions(lesions, amap, tissue, with_modulators=False).labels


def _fibonacci_sphere(n: int) -> F64:
    i = np.arange(n, dtype=np.float64) + 0.5
    zc = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - zc * zc)
    phi = np.pi * (3.0 - math.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), zc], axis=1)


@dataclass(frozen=True)
class LesionSummary:
    """True per-lesion values: volumes in mm3 (analytic, by quadrature over directions)."""

    index: int
    centre_mm: tuple[float, float, float]
    radius_mm: float
    tumour_mm3: float  # ET + NETC
    et_mm3: float
    netc_mm3: float
    infratentorial: bool


def lesion_summaries(head: Head, lesions: Sequence[Lesion], *, n_directions: int = 4096) -> list[LesionSummary]:
    """Per-lesion true tumour, ET and NETC volumes (mm3) and whether the centre is infratentorial.

    Volumes integrate ``r(u)^3 / 3`` over directions, so they do not depend on any grid; tumours never
    overlap, so they are also the lesions' exact shares of the ET and NETC totals.
    """
    if n_directions < 100:
        raise ValueError(f"n_directions must be >= 100, got {n_directions}")
    u = _fibonacci_sphere(n_directions).astype(np.float32)
    w = 4.0 * math.pi / n_directions / 3.0
    out: list[LesionSummary] = []
    for idx, lesion in enumerate(lesions):
        shape = _LesionShape.of(lesion)
        r_s = shape.surface_radius(lesion, u[:, 0], u[:, 1], u[:, 2])
        r_c = shape.core_radius(lesion, u[:, 0], u[:, 1], u[:, 2], r_s)
        tumour = float(np.sum(r_s.astype(np.float64) ** 3) * w)
        netc = float(np.sum(r_c.astype(np.float64) ** 3) * w)
        infra = bool(head.is_infratentorial(np.array(lesion.centre_mm)))
        out.append(LesionSummary(idx, lesion.centre_mm, lesion.radius_mm, tumour, tumour - netc, netc, infra))
    return out


def region_volumes(head: Head, lesions: Sequence[Lesion], resolution_mm: float = 0.5) -> dict[str, float]:
    """True region volumes (mm3), rendered at ``resolution_mm`` over the union of lesion boxes only.

    Keys: ``ET``, ``NETC``, ``SNFH``, ``TC`` (tumour core = ET + NETC) and ``WT`` (whole tumour = all
    three). Boxes lie on one lattice anchored at the origin; a voxel inside several boxes is counted once.
    """
    _check_positive("resolution_mm", resolution_mm)
    h = float(resolution_mm)
    anat = _Anatomy(head)
    counts = np.zeros(4, dtype=np.int64)
    boxes: list[tuple[F64, F64]] = []  # integer lattice index ranges [lo, hi)
    for lesion in lesions:
        c = np.array(lesion.centre_mm)
        r = lesion.influence_radius_mm + h
        boxes.append((np.floor((c - r) / h), np.ceil((c + r) / h) + 1))
    max_voxels = 4_000_000
    for b, (lo, hi) in enumerate(boxes):
        n = (hi - lo).astype(int)
        slab = max(1, max_voxels // int(n[0] * n[1]))
        for z0 in range(0, int(n[2]), slab):
            z1 = min(int(n[2]), z0 + slab)
            c0 = (lo + np.array([0.0, 0.0, float(z0)])) * h
            amap = _AffineMap(c0, np.eye(3) * h, (z1 - z0, int(n[1]), int(n[0])))
            ii = lo[0] + np.arange(n[0])
            jj = lo[1] + np.arange(n[1])
            kk = lo[2] + np.arange(z0, z1)
            keep = np.ones(amap.shape, dtype=np.bool_)
            for plo, phi in boxes[:b]:
                inside = (
                    ((kk >= plo[2]) & (kk < phi[2]))[:, None, None]
                    & ((jj >= plo[1]) & (jj < phi[1]))[None, :, None]
                    & ((ii >= plo[0]) & (ii < phi[0]))[None, None, :]
                )
                keep &= ~inside
            # Anatomy matters only where some lesion's edema can reach.
            need = np.zeros(amap.shape, dtype=np.bool_)
            for lesion in lesions:
                if lesion.edema_mm > 0:
                    cx, cy, cz = (np.float32(v) for v in lesion.centre_mm)
                    dx = (ii * h).astype(np.float32) - cx
                    dy = (jj * h).astype(np.float32) - cy
                    dz = (kk * h).astype(np.float32) - cz
                    r2 = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2
                    need |= r2 < np.float32(lesion.influence_radius_mm**2)
            tissue = _render_tissue_map(anat, amap, within=need & keep)
            labels = _render_lesions(lesions, amap, tissue, with_modulators=False).labels
            counts += np.bincount(labels[keep], minlength=4)[:4]
    vox = h**3
    et, netc, snfh = counts[LABEL_ET] * vox, counts[LABEL_NETC] * vox, counts[LABEL_SNFH] * vox
    return {
        "ET": float(et),
        "NETC": float(netc),
        "SNFH": float(snfh),
        "TC": float(et + netc),
        "WT": float(et + netc + snfh),
    }


def sample_lesions(
    head: Head,
    n: int,
    rng: np.random.Generator,
    *,
    radius_median_mm: float = 7.0,
    radius_sigma: float = 0.45,
    radius_range_mm: tuple[float, float] = (3.0, 25.0),
    infratentorial_fraction: float = 0.15,
    edema_ratio_median: float = 1.0,
    min_gap_mm: float = 3.0,
    max_attempts: int = 60,
) -> list[Lesion]:
    """Place ``n`` (1..15) metastases in the brain parenchyma, largest first.

    Radii are log-normal (median ``radius_median_mm``, log-sd ``radius_sigma``) clipped to
    ``radius_range_mm``; each lesion is infratentorial with probability ``infratentorial_fraction``;
    centres prefer the grey/white junction; the whole tumour (at its largest radius) fits inside the
    intracranial space, and tumours keep at least ``min_gap_mm`` apart (edemas may merge). Larger
    lesions are more often necrotic. Raises ValueError when a lesion cannot be placed in
    ``max_attempts`` batches of candidate positions.
    """
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= 15:
        raise ValueError(f"n must be an integer in 1..15, got {n!r}")
    _check_positive("radius_median_mm", radius_median_mm)
    if not (math.isfinite(radius_sigma) and radius_sigma >= 0):
        raise ValueError(f"radius_sigma must be >= 0, got {radius_sigma!r}")
    r_lo, r_hi = (float(v) for v in radius_range_mm)
    if not (0 < r_lo <= r_hi <= 40):
        raise ValueError(f"radius_range_mm must satisfy 0 < lo <= hi <= 40, got {radius_range_mm!r}")
    _check_range("infratentorial_fraction", infratentorial_fraction, 0.0, 1.0)
    _check_positive("edema_ratio_median", edema_ratio_median)
    if not (math.isfinite(min_gap_mm) and min_gap_mm >= 0):
        raise ValueError(f"min_gap_mm must be >= 0, got {min_gap_mm!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")

    anat = _Anatomy(head)
    radii = np.sort(np.clip(rng.lognormal(math.log(radius_median_mm), radius_sigma, int(n)), r_lo, r_hi))[::-1]
    placed: list[Lesion] = []
    directions = _fibonacci_sphere(64)
    half_box = anat.semi * np.array([0.9, 0.9, 0.9])
    for radius in radii:
        lesion = _sample_lesion_attributes(float(radius), rng, edema_ratio_median)
        want_infra = bool(rng.uniform() < infratentorial_fraction)
        centre = _place_lesion(anat, lesion, placed, want_infra, rng, directions, half_box, min_gap_mm, max_attempts)
        placed.append(
            Lesion(
                centre_mm=centre,
                radius_mm=lesion.radius_mm,
                necrosis_fraction=lesion.necrosis_fraction,
                rim_irregularity=lesion.rim_irregularity,
                heterogeneity=lesion.heterogeneity,
                edema_mm=lesion.edema_mm,
                shape_seed=lesion.shape_seed,
            )
        )
    return placed


def _sample_lesion_attributes(radius: float, rng: np.random.Generator, edema_ratio_median: float) -> Lesion:
    p_necrotic = 1.0 / (1.0 + math.exp(-(radius - 8.0) / 2.5))
    necrosis = float(rng.uniform(0.3, 0.75)) if rng.uniform() < p_necrotic else 0.0
    irregular = float(np.clip(rng.beta(2.0, 3.0) + 0.02 * (radius - 7.0), 0.0, 1.0))
    hetero = float(rng.uniform(0.1, 0.8))
    ratio = float(rng.lognormal(math.log(edema_ratio_median), 0.6))
    edema = float(np.clip(ratio * radius * (0.5 + 0.5 * min(radius / 8.0, 1.5)), 0.0, min(2.0 * radius + 4.0, 30.0)))
    return Lesion(
        centre_mm=(0.0, 0.0, 0.0),
        radius_mm=radius,
        necrosis_fraction=min(necrosis, 0.85),
        rim_irregularity=irregular,
        heterogeneity=hetero,
        edema_mm=edema,
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _place_lesion(
    anat: _Anatomy,
    lesion: Lesion,
    placed: Sequence[Lesion],
    want_infra: bool,
    rng: np.random.Generator,
    directions: F64,
    half_box: F64,
    min_gap_mm: float,
    max_attempts: int,
) -> tuple[float, float, float]:
    r_max = lesion.max_radius_mm
    batch = 2048
    for attempt in range(max_attempts):
        # Insist on the drawn compartment for the first half of the attempts, then accept either.
        strict = attempt < max_attempts // 2
        if attempt == max_attempts // 2:
            logger.debug(
                "lesion of radius %.1f mm does not fit the %s compartment; accepting either",
                lesion.radius_mm,
                "infratentorial" if want_infra else "supratentorial",
            )
        cand = rng.uniform(-1.0, 1.0, (batch, 3)) * half_box
        smp = _Samples.from_points(cand)
        tis, jd = anat.classify(smp, junction=True)
        ok = np.isin(tis, PARENCHYMA_TISSUES)
        if strict:
            infra = anat.head.is_infratentorial(cand)
            ok &= infra if want_infra else ~infra
        for other in placed:
            dist = np.linalg.norm(cand - np.array(other.centre_mm), axis=1)
            ok &= dist >= r_max + other.max_radius_mm + min_gap_mm
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        # The tumour (at its largest radius, plus 1 mm) must lie inside the intracranial space.
        pts = cand[idx, None, :] + (r_max + 1.0) * directions[None, :, :]
        psmp = _Samples.from_points(pts.reshape(-1, 3))
        depth = anat.intracranial_depth(psmp, np.arange(pts.shape[0] * pts.shape[1]))
        fits = np.all(depth.reshape(idx.size, -1) > 0, axis=1)
        idx = idx[fits]
        if idx.size == 0:
            continue
        weights = 0.25 + np.exp(-0.5 * (jd[idx].astype(np.float64) / 4.0) ** 2)
        pick = int(rng.choice(idx, p=weights / weights.sum()))
        return (float(cand[pick, 0]), float(cand[pick, 1]), float(cand[pick, 2]))
    raise ValueError(
        f"could not place a lesion of radius {lesion.radius_mm:.1f} mm (max {r_max:.1f} mm) after "
        f"{max_attempts} attempts; reduce the number or size of lesions or min_gap_mm"
    )


# --------------------------------------------------------------------------------------------------
# Bias field
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BiasField:
    """Smooth multiplicative receive-field inhomogeneity, fixed to the scanner (not the patient).

    ``exp(strength * f(p))`` where ``f`` is a sum of ``n_components`` random cosines with wavelengths
    in ``wavelength_mm``, made zero-mean with peak 1 over a 100 mm ball about the isocentre and
    clipped to [-1, 1]: values lie in ``[exp(-strength), exp(strength)]`` (about 0.74..1.35 for 0.3).
    """

    seed: int
    strength: float = 0.3
    n_components: int = 4
    wavelength_mm: tuple[float, float] = (200.0, 500.0)

    def __post_init__(self) -> None:
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        _check_range("strength", self.strength, 0.0, 2.0)
        if not 1 <= int(self.n_components) <= 64:
            raise ValueError(f"n_components must be in 1..64, got {self.n_components!r}")
        lo, hi = (float(v) for v in self.wavelength_mm)
        if not (0 < lo <= hi):
            raise ValueError(f"wavelength_mm must satisfy 0 < lo <= hi, got {self.wavelength_mm!r}")
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "wavelength_mm", (lo, hi))

    @classmethod
    def identity(cls) -> BiasField:
        """A field that is 1 everywhere."""
        return cls(seed=0, strength=0.0)

    def _normalised(self) -> tuple[_CosineField, float, float]:
        f = _make_field(
            np.random.default_rng([self.seed, 11]), int(self.n_components), self.wavelength_mm, bounded=True
        )
        rng = np.random.default_rng(12345)
        ref = rng.standard_normal((2048, 3))
        ref *= (100.0 * rng.uniform(0, 1, 2048) ** (1 / 3) / np.linalg.norm(ref, axis=1))[:, None]
        r32 = ref.astype(np.float32)
        vals = _field_at(f, r32[:, 0], r32[:, 1], r32[:, 2]).astype(np.float64)
        mean = float(vals.mean())
        peak = float(np.max(np.abs(vals - mean)))
        return f, mean, max(peak, 1e-6)

    def evaluate(self, grid: Grid, motion: RigidMotion | None = None) -> F32:
        """The field on ``grid`` (float32, ``(nz, ny, nx)``).

        ``motion`` is accepted for call symmetry with the anatomy renderers and ignored: the field
        belongs to the scanner, so patient movement does not move it.
        """
        del motion
        if self.strength == 0.0:
            return np.ones(grid.shape, dtype=np.float32)
        f, mean, peak = self._normalised()
        amap = _grid_map(grid, None)
        g = (_field_on_map(f, amap) - np.float32(mean)) / np.float32(peak)
        np.clip(g, -1.0, 1.0, out=g)
        out: F32 = np.exp(np.float32(self.strength) * g).astype(np.float32, copy=False)
        return out


def sample_bias_field(rng: np.random.Generator, strength: float = 0.3) -> BiasField:
    """A random bias field with the given strength (approximate peak relative deviation)."""
    _check_range("strength", strength, 0.0, 2.0)
    return BiasField(seed=int(rng.integers(0, 2**31 - 1)), strength=float(strength))


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
@dataclass
class _Scene:
    """Everything sequence-independent at one set of sample points (one sub-slice offset)."""

    tissue: U8
    lesions: _LesionLayers
    texture_gain: F32  # 1 + per-tissue texture
    lesion_index: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))


def _sub_offsets(grid: Grid) -> list[tuple[float, float, float]]:
    """Index offsets of the through-slice sub-samples (just the centre unless slices are thick)."""
    sp = np.array(grid.spacing)
    axis = int(np.argmax(sp))
    ratio = sp[axis] / sp.min()
    if ratio <= 2.0:
        return [(0.0, 0.0, 0.0)]
    n = min(7, math.ceil(ratio) | 1)
    out: list[tuple[float, float, float]] = []
    for t in np.linspace(-(n - 1) / (2 * n), (n - 1) / (2 * n), n):
        off = [0.0, 0.0, 0.0]
        off[axis] = float(t)
        out.append((off[0], off[1], off[2]))
    return out


def _build_scene(
    anat: _Anatomy,
    lesions: Sequence[Lesion],
    grid: Grid,
    motion: RigidMotion | None,
    offset: tuple[float, float, float],
) -> _Scene:
    amap = _grid_map(grid, motion, offset)
    tissue = _render_tissue_map(anat, amap)
    layers = _render_lesions(lesions, amap, tissue, with_modulators=True)
    gain = _field_on_map(anat.texture, amap)
    gain *= _TEXTURE_AMPLITUDE[tissue]
    gain += np.float32(1.0)
    lesion_index = np.flatnonzero(layers.labels.ravel())
    return _Scene(tissue=tissue, lesions=layers, texture_gain=gain, lesion_index=lesion_index)


def _scenes(anat: _Anatomy, lesions: Sequence[Lesion], grid: Grid, motion: RigidMotion | None) -> list[_Scene]:
    return [_build_scene(anat, lesions, grid, motion, off) for off in _sub_offsets(grid)]


def _object_intensity(scene: _Scene, column: int) -> F32:
    """Noise-free relative intensity of one sequence for one scene."""
    img: F32 = _TISSUE_INTENSITY[:, column][scene.tissue]
    img *= scene.texture_gain
    idx = scene.lesion_index
    if idx.size:
        flat = img.reshape(-1)
        lab = scene.lesions.labels.reshape(-1)[idx]
        tex = scene.lesions.texture.reshape(-1)[idx]
        edw = scene.lesions.edema_weight.reshape(-1)[idx]
        base = flat[idx]
        lesion_val = _LESION_INTENSITY[:, column][lab - 1]
        tumour_val = lesion_val * (np.float32(1.0) + tex)
        if column == _T1C_COLUMN:  # contrast enhancement: ET on t1c only (a gain of exactly 1 at z = 0)
            gain = np.float32(1.0) + scene.lesions.enhancement.reshape(-1)[idx]
            tumour_val *= np.where(lab == LABEL_ET, gain, np.float32(1.0))
        edema_val = base + edw * (lesion_val - base)
        flat[idx] = np.where(lab == LABEL_SNFH, edema_val, tumour_val)
    return img


def _psf_sigmas(grid: Grid, psf_fwhm_mm: float) -> list[float]:
    sig = [psf_fwhm_mm / 2.3548 / s for s in grid.spacing]  # x, y, z
    sig = [v if v >= 0.3 else 0.0 for v in sig]
    return [sig[2], sig[1], sig[0]]  # numpy axis order


def sequence_seed(seed: int, sequence: str) -> int:
    """The noise seed :func:`render_case` uses for ``sequence`` given the case ``seed``."""
    col = _check_sequence(sequence)
    return int(np.random.SeedSequence([int(seed), col]).generate_state(1)[0])


def _finish(
    scenes: Sequence[_Scene],
    grid: Grid,
    sequence: str,
    bias: BiasField | None,
    noise_sigma: float,
    seed: int,
    psf_fwhm_mm: float,
    scale: float,
) -> F32:
    col = _check_sequence(sequence)
    img = _object_intensity(scenes[0], col)
    if len(scenes) > 1:
        for sc in scenes[1:]:
            img += _object_intensity(sc, col)
        img /= np.float32(len(scenes))
    sig = _psf_sigmas(grid, psf_fwhm_mm)
    if any(s > 0 for s in sig):
        img = ndimage.gaussian_filter(img, sigma=sig, mode="nearest", truncate=3.0)
    if bias is not None and bias.strength > 0:
        img *= bias.evaluate(grid)
    img *= np.float32(scale)
    if noise_sigma > 0:
        rng = np.random.default_rng(int(seed))
        s = np.float32(noise_sigma * float(_TISSUE_INTENSITY[WM, col]) * scale)
        re = rng.standard_normal(img.shape, dtype=np.float32)
        re *= s
        re += img
        im = rng.standard_normal(img.shape, dtype=np.float32)
        im *= s
        img = np.sqrt(re * re + im * im)
    np.maximum(img, np.float32(0.0), out=img)
    return img.astype(np.float32, copy=False)


def _check_render_args(noise_sigma: float, psf_fwhm_mm: float, scale: float) -> None:
    if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    if not (math.isfinite(psf_fwhm_mm) and psf_fwhm_mm >= 0):
        raise ValueError(f"psf_fwhm_mm must be >= 0 (mm), got {psf_fwhm_mm!r}")
    _check_positive("scale", scale)


def render_sequence(
    head: Head,
    lesions: Sequence[Lesion],
    grid: Grid,
    sequence: str,
    *,
    motion: RigidMotion | None = None,
    bias: BiasField | None = None,
    noise_sigma: float = 0.03,
    seed: int,
    psf_fwhm_mm: float = 1.0,
    scale: float = 1000.0,
) -> F32:
    """One MR image (float32, ``(nz, ny, nx)``, about 0..1500 for ``scale`` 1000), non-negative.

    ``sequence`` is one of :data:`SEQUENCES`; ``motion`` moves the patient (not the bias field);
    ``noise_sigma`` is the Rician noise sigma relative to white matter; ``seed`` seeds the noise;
    ``psf_fwhm_mm`` is the Gaussian PSF FWHM (mm, 0 to disable).
    """
    _check_sequence(sequence)
    _check_render_args(noise_sigma, psf_fwhm_mm, scale)
    scenes = _scenes(_Anatomy(head), lesions, grid, motion)
    return _finish(scenes, grid, sequence, bias, noise_sigma, seed, psf_fwhm_mm, scale)


def render_case(
    head: Head,
    lesions: Sequence[Lesion],
    grid: Grid,
    *,
    sequences: Sequence[str] = SEQUENCES,
    motions: Mapping[str, RigidMotion] | None = None,
    bias: Mapping[str, BiasField] | None = None,
    noise_sigma: float = 0.03,
    seed: int = 0,
    skull_stripped: bool = False,
    psf_fwhm_mm: float = 1.0,
    scale: float = 1000.0,
) -> dict[str, F32 | U8]:
    """Render several sequences plus ``"seg"`` (labels) for one patient on one grid.

    ``motions`` / ``bias`` map sequence names to a patient movement / bias field (missing: none). The
    segmentation is rendered with the motion of ``t1c`` (the reference sequence of BraTS-style
    annotation). Sequence ``s`` uses noise seed ``sequence_seed(seed, s)``, so a sequence's image does
    not depend on which other sequences are requested. Sequences sharing a motion share one anatomy
    rendering. With ``skull_stripped`` every image is zeroed outside its own brain mask (computed with
    that sequence's motion, so each stripped image is consistent with the anatomy it shows; with no
    motions all masks are identical, as in BraTS data); the segmentation is always inside it.
    """
    for s in sequences:
        _check_sequence(s)
    for name, mapping in (("motions", motions), ("bias", bias)):
        for key in mapping or {}:
            if key not in SEQUENCES:
                raise ValueError(f"{name} has unknown sequence {key!r}; expected keys among {SEQUENCES}")
    _check_render_args(noise_sigma, psf_fwhm_mm, scale)
    anat = _Anatomy(head)
    motions = motions or {}
    bias = bias or {}
    cache: dict[RigidMotion, list[_Scene]] = {}

    def scenes_for(motion: RigidMotion) -> list[_Scene]:
        if motion not in cache:
            cache[motion] = _scenes(anat, lesions, grid, None if motion == RigidMotion.identity() else motion)
        return cache[motion]

    centre_index = len(_sub_offsets(grid)) // 2
    out: dict[str, F32 | U8] = {}
    for s in sequences:
        motion = motions.get(s, RigidMotion.identity())
        scenes = scenes_for(motion)
        img = _finish(scenes, grid, s, bias.get(s), noise_sigma, sequence_seed(seed, s), psf_fwhm_mm, scale)
        if skull_stripped:
            img[~np.isin(scenes[centre_index].tissue, INTRACRANIAL_TISSUES)] = 0.0
        out[s] = img
    ref = scenes_for(motions.get("t1c", RigidMotion.identity()))
    out["seg"] = ref[centre_index].lesions.labels.copy()
    return out


# --------------------------------------------------------------------------------------------------
# Timing report: python -m survival_model.synthetic.phantom
# --------------------------------------------------------------------------------------------------
def _benchmark() -> None:
    """Print wall times of typical calls (one patient, 5 lesions; warm, so no import costs)."""
    rng = np.random.default_rng(0)
    head = sample_head(rng)
    lesions = sample_lesions(head, 5, rng)
    bias = {s: sample_bias_field(rng) for s in SEQUENCES}
    motions = {s: sample_motion(rng) for s in ("t1n", "t2w", "t2f")}
    cases = (
        ("default grid, one pose", Grid.centred((96, 96, 62), (2.5, 2.5, 2.5)), None),
        ("default grid, 4 poses", Grid.centred((96, 96, 62), (2.5, 2.5, 2.5)), motions),
        ("thick slices 1x1x5 mm", Grid.centred((240, 240, 31), (1.0, 1.0, 5.0)), None),
        ("BraTS grid 1 mm, one pose", Grid.centred((240, 240, 155), (1.0, 1.0, 1.0)), None),
    )
    render_case(head, lesions, cases[0][1], seed=1)  # warm-up
    for name, grid, mot in cases:
        t0 = time.perf_counter()
        render_case(head, lesions, grid, seed=1, bias=bias, motions=mot)
        print(f"render_case, 4 sequences + seg, {name} {grid.size}: {time.perf_counter() - t0:.3f} s")
    for res in (2.0, 0.5):
        t0 = time.perf_counter()
        region_volumes(head, lesions, resolution_mm=res)
        print(f"region_volumes, {len(lesions)} lesions at {res} mm: {time.perf_counter() - t0:.3f} s")
    t0 = time.perf_counter()
    sample_lesions(head, 15, np.random.default_rng(1))
    print(f"sample_lesions, 15 lesions: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    _benchmark()
