"""The head: :class:`Head` (one patient's anatomy), tissue classification, and the tissue renderers.

:func:`render_tissues` (a grid), :func:`tissues_at_points` (scattered points) and :func:`brain_mask` (the
skull-stripping mask) all classify points with ``_Anatomy``, the per-head fields and derived constants.

Anatomy model (tissue codes in :mod:`.tables`)
----------------------------------------------
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from survival_model.synthetic.phantom.geometry import (
    Grid,
    RigidMotion,
    _AffineMap,
    _field_at,
    _grid_map,
    _make_field,
    _Samples,
)
from survival_model.synthetic.phantom.tables import (
    AIR,
    CSF,
    DEEP_GM,
    DURA,
    EYE,
    F32,
    F64,
    GM,
    INTRACRANIAL_TISSUES,
    SCALP,
    SKULL,
    SOFT_TISSUE,
    U8,
    VENTRICLE,
    WM,
    BoolArray,
    FloatLike,
    IntArray,
    _check_range,
    _float3,
)

__all__ = ["Head", "brain_mask", "render_tissues", "sample_head", "tissues_at_points"]

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
