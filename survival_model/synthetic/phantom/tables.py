"""Codes and tables of the phantom, and the small helpers every other module shares.

Tissue and label codes, the sequences, the intensity table with the texture amplitudes and the lesion
appearance constants, the array type aliases, and the validation helpers (``_float3``, ``_check_*``).

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

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

for _table in (_TISSUE_INTENSITY, _LESION_INTENSITY, _TEXTURE_AMPLITUDE):
    _table.setflags(write=False)


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
