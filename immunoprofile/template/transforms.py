"""Transforms a template declares per marker: our own names and GatingML 2.0's.

Every transform is a small frozen dataclass with ``apply`` and ``inverse`` on float64 arrays.
The GatingML-parameterised ones (``asinh``, ``logicle``, ``hyperlog``, ``log`` and ``linear``
with T/A) call the same FlowUtils kernels FlowKit uses, so values are bit-identical to FlowKit's
and gate membership can be compared event for event. ``arcsinh`` (``asinh(x / cofactor)``, the
conventional flow scale) and the identity are ours; :func:`to_gatingml` converts them to GatingML's
parameterisation together with the factor by which gate coordinates must be scaled. FlowJo 10's
own ``biex`` and ``log`` (imported workspaces) live here too, so that the template model needs
nothing from the FlowJo importer (which imports the model).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from flowutils import transforms as fu

from immunoprofile.errors import TemplateError

if TYPE_CHECKING:
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class Transform:
    """Base class: a monotonic increasing map from linear values to display coordinates."""

    kind: ClassVar[str] = ""

    def apply(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Display coordinates of linear values.

        Parameters
        ----------
        x
            Linear (compensated) values, any shape.

        Returns
        -------
        numpy.ndarray
            Transformed float64 values, same shape.
        """
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Linear values of display coordinates (the inverse of :meth:`apply`).

        Parameters
        ----------
        y
            Display coordinates, any shape.

        Returns
        -------
        numpy.ndarray
            Linear float64 values, same shape.
        """
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, e.g. ``{"type": "logicle", "T": 262144, ...}``."""
        return {"type": self.kind, **asdict(self)}

    def for_channel(self, top: float | None) -> Transform:
        """The transform as applied to a channel whose largest decodable value is ``top``
        ($PnR − 1 for a linear channel): the same one, except for transforms declared
        relative to a reference range.

        Parameters
        ----------
        top
            The channel's largest decodable value (see
            :func:`~immunoprofile.io.fcs.channel_top`), or None when unknown.

        Returns
        -------
        Transform
            The transform to use on that channel.
        """
        return self


@dataclass(frozen=True)
class Identity(Transform):
    """No transform: gate coordinates are linear (compensated) values, as for scatter."""

    kind: ClassVar[str] = "linear"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _col(x)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return _col(y)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "linear"}


@dataclass(frozen=True)
class Arcsinh(Transform):
    """``asinh(x / cofactor)``: cofactor 150 for conventional flow, 5 for mass cytometry.

    With ``reference_range`` the cofactor is meant for channels of that range (262144 for
    BD's 18-bit scale) and follows each file's own range as decoded (``$PnR`` over its gain,
    or the top of a log-amplified channel): a CytoFLEX channel (2^20) gets 4 × the cofactor,
    an Aurora one (2^22) 16 ×, since their signals are that much larger for the same cells.
    Gate coordinates then mean the same on every instrument.
    """

    cofactor: float = 150.0
    reference_range: float | None = None
    kind: ClassVar[str] = "arcsinh"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.arcsinh(_col(x) / self.cofactor)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.sinh(_col(y)) * self.cofactor

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "cofactor": self.cofactor}
        if self.reference_range is not None:
            out["reference_range"] = self.reference_range
        return out

    def for_channel(self, top: float | None) -> Transform:
        """This transform with its cofactor scaled to a channel's range.

        Parameters
        ----------
        top
            The channel's largest decodable value; None, infinite or ≤ 0 leaves the
            transform as it is.

        Returns
        -------
        Transform
            ``self`` without ``reference_range`` or when the ranges match; otherwise an
            :class:`Arcsinh` with cofactor × ``(top + 1) / reference_range`` (rounded to a
            power of two when within 1% of one).
        """
        if self.reference_range is None or top is None or not math.isfinite(top) or top <= 0:
            return self
        scale = (top + 1.0) / self.reference_range
        # Within 1% of a power of two is that power (float32 ranges, 2^k − 1 tops); a ratio
        # of 1 gives back this very transform (the same cache keys and GatingML as before).
        power = 2.0 ** round(math.log2(scale))
        if abs(scale / power - 1.0) < 0.01:
            scale = power
        return self if scale == 1.0 else Arcsinh(cofactor=self.cofactor * scale)


@dataclass(frozen=True)
class GMLLinear(Transform):
    """GatingML ``flin(x, T, A) = (x + A) / (T + A)``."""

    T: float = 262144.0
    A: float = 0.0
    kind: ClassVar[str] = "flin"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (_col(x) + self.A) / (self.T + self.A)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (_col(y) * (self.T + self.A)) - self.A


@dataclass(frozen=True)
class GMLAsinh(Transform):
    """GatingML parametrised inverse hyperbolic sine ``fasinh(x, T, M, A)``."""

    T: float = 262144.0
    M: float = 4.5
    A: float = 0.0
    kind: ClassVar[str] = "asinh"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return fu.asinh(_col(x), None, t=self.T, m=self.M, a=self.A)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return fu.asinh_inverse(_col(y), None, t=self.T, m=self.M, a=self.A)


@dataclass(frozen=True)
class Logicle(Transform):
    """Logicle (Parks et al. 2006) with GatingML's T, W, M, A; output on the 0–1 scale."""

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    kind: ClassVar[str] = "logicle"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return fu.logicle(_col(x), None, t=self.T, m=self.M, w=self.W, a=self.A)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return fu.logicle_inverse(_col(y), None, t=self.T, m=self.M, w=self.W, a=self.A)


@dataclass(frozen=True)
class Hyperlog(Transform):
    """Hyperlog (Bagwell 2005) with GatingML's T, W, M, A."""

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    kind: ClassVar[str] = "hyperlog"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return fu.hyperlog(_col(x), None, t=self.T, m=self.M, w=self.W, a=self.A)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return fu.hyperlog_inverse(_col(y), None, t=self.T, m=self.M, w=self.W, a=self.A)


@dataclass(frozen=True)
class GMLLog(Transform):
    """GatingML ``flog(x, T, M) = log10(x / T) / M + 1`` (undefined, NaN, for x ≤ 0)."""

    T: float = 262144.0
    M: float = 4.5
    kind: ClassVar[str] = "log"

    def apply(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return fu.log(_col(x), None, t=self.T, m=self.M)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return fu.log_inverse(_col(y), None, t=self.T, m=self.M)


# --- FlowJo 10's own transforms (imported workspaces) ----------------------------------


@functools.lru_cache(maxsize=64)
def _biex_lut(negative: float, width: float, positive: float,
              max_value: float) -> WSPBiexTransform:
    # Building the 4097-point lookup table and its interpolators costs milliseconds; the
    # engine calls apply() once per chunk of events, so share one FlowKit object per setting.
    from flowkit._models.transforms._wsp_transforms import WSPBiexTransform

    return WSPBiexTransform(negative=negative, width=width, positive=positive,
                            max_value=max_value)


@dataclass(frozen=True)
class FlowJoBiex(Transform):
    """FlowJo 10's biexponential transform, exactly as FlowKit's ``WSPBiexTransform``.

    FlowJo evaluates biex through a lookup table of 4097 points (output 0–4096, FlowJo's
    channel scale) with linear interpolation between them; inputs beyond the table are clamped
    to its ends. The parameters are the workspace's ``neg``, ``width`` (the negative "width
    basis", e.g. -10), ``pos`` and ``maxRange`` attributes.

    The map is non-decreasing and defined on all of R, but flat outside the table: a bound
    strictly inside the table's outputs is decided in linear space (a clamped input stays on
    its side), a bound at or beyond the ends takes the exact transform
    (:func:`immunoprofile.gating.events.increasing_between`).
    """

    negative: float = 0.0
    width: float = -10.0
    positive: float = 4.418540
    max_value: float = 262144.000029
    kind: ClassVar[str] = "flowjo_biex"

    def __post_init__(self) -> None:
        problems = []
        if not self.width < 0:
            problems.append(f"width must be negative (FlowJo's width basis), got {self.width}")
        if not self.positive > 0:
            problems.append(f"positive (decades) must be > 0, got {self.positive}")
        if not self.max_value > 0:
            problems.append(f"max_value must be > 0, got {self.max_value}")
        if problems:
            raise TemplateError(f"invalid {self.kind} transform: {'; '.join(problems)}")

    def _lut(self) -> WSPBiexTransform:
        return _biex_lut(float(self.negative), float(self.width), float(self.positive),
                         float(self.max_value))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._lut().apply(_col(x)), dtype=np.float64)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(self._lut().inverse(_col(y)), dtype=np.float64)

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """The lookup table: inputs (linear values) and outputs (channels 0-4096)."""
        f = self._lut()._lut_func
        return np.asarray(f.x, dtype=np.float64), np.asarray(f.y, dtype=np.float64)


@dataclass(frozen=True)
class FlowJoLog(Transform):
    """FlowJo 10's log transform: ``(log10(max(x, offset)) - log10(offset)) / decades``.

    Output runs from 0 at ``offset`` to 1 at ``offset · 10**decades``; values below
    ``offset`` are clamped to it (FlowJo's behaviour, as FlowKit's ``WSPLogTransform``).
    Non-decreasing on R but flat below ``offset``: like biex, only bounds above 0 are decided
    in linear space.
    """

    offset: float = 1.0
    decades: float = 4.5
    kind: ClassVar[str] = "flowjo_log"

    def __post_init__(self) -> None:
        if not (self.offset > 0 and self.decades > 0):
            raise TemplateError(f"invalid {self.kind} transform: offset and decades must be "
                                f"> 0, got offset={self.offset}, decades={self.decades}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        # FlowKit's own code, so values are bit-identical to what FlowKit gates on.
        from flowkit._models.transforms._wsp_transforms import WSPLogTransform

        return WSPLogTransform(offset=self.offset, decades=self.decades).apply(_col(x))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        # FlowKit has no inverse; this inverts the unclamped branch (y = 0 gives offset).
        return self.offset * np.power(10.0, _col(y) * self.decades)



_KINDS: dict[str, type[Transform]] = {
    "linear": Identity,
    "identity": Identity,
    "arcsinh": Arcsinh,
    "flin": GMLLinear,
    "asinh": GMLAsinh,
    "logicle": Logicle,
    "hyperlog": Hyperlog,
    "log": GMLLog,
    "flowjo_biex": FlowJoBiex,
    "flowjo_log": FlowJoLog,
}


def transform_from_dict(spec: Any, *, where: str = "") -> Transform:
    """Build a transform from its YAML form.

    ``{"type": "linear"}`` is the identity unless ``T`` is given (then GatingML's flin);
    ``{"type": "arcsinh", "cofactor": 150}``; ``{"type": "logicle", "T":…, "W":…, "M":…,
    "A":…}``; ``{"type": "asinh", "T":…, "M":…, "A":…}``; ``{"type": "hyperlog", …}``;
    ``{"type": "log", "T":…, "M":…}``. A bare string names the type with default parameters.

    Parameters
    ----------
    spec
        The YAML form (a mapping with ``type``), a type name, or a :class:`Transform`
        (returned as it is).
    where
        Where the spec was found, prefixed to messages (e.g. ``"transforms.CD4"``).

    Returns
    -------
    Transform
        The transform, its parameters checked.

    Raises
    ------
    TemplateError
        No or unknown type, unknown or non-numeric parameters, or out-of-range values.
    """
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise TemplateError(f"{where}: a transform needs a 'type' (got {spec!r})")
    params = {k: v for k, v in spec.items() if k != "type"}
    kind = str(spec["type"]).lower()
    if kind == "linear" and params:
        kind = "flin"
    cls = _KINDS.get(kind)
    if cls is None:
        raise TemplateError(
            f"{where}: unknown transform type {spec['type']!r}; "
            f"use one of {sorted(set(_KINDS) - {'identity'})}"
        )
    fields = set(cls.__dataclass_fields__)
    unknown = set(params) - fields
    if unknown:
        raise TemplateError(
            f"{where}: transform {kind} takes {sorted(fields) or 'no parameters'}, "
            f"not {sorted(unknown)}"
        )
    try:
        values = {k: float(v) for k, v in params.items()}
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"{where}: transform parameters must be numbers ({exc})") from exc
    transform = cls(**values)
    _check_parameters(transform, where)
    return transform


def _check_parameters(t: Transform, where: str) -> None:
    problems = []
    if isinstance(t, Arcsinh) and not t.cofactor > 0:
        problems.append("cofactor must be > 0")
    if isinstance(t, Arcsinh) and t.reference_range is not None and not t.reference_range > 1:
        problems.append("reference_range must be > 1 (a $PnR such as 262144)")
    for name in ("T", "M"):
        value = getattr(t, name, None)
        if value is not None and not value > 0:
            problems.append(f"{name} must be > 0")
    if isinstance(t, Logicle | Hyperlog):
        if not 0 <= t.W <= t.M / 2:
            problems.append("W must lie in [0, M/2]")
        if not -t.W <= t.A <= t.M - 2 * t.W:
            problems.append("A must lie in [-W, M - 2W]")
    if problems:
        raise TemplateError(f"{where}: invalid {t.kind} transform: {'; '.join(problems)}")


def to_gatingml(t: Transform) -> tuple[Transform | None, float]:
    """GatingML's parameterisation of a transform and the scale applied to gate coordinates.

    Returns ``(gml_transform, factor)``: a coordinate ``y`` in our space is ``y * factor`` in the
    GatingML space. The identity maps to no transform (``None``), ``arcsinh(x/c)`` to GatingML's
    asinh with ``A = 0``, ``M = 4.5`` and ``T = c·sinh(M·ln10)``, which is ``asinh(x/c)`` divided
    by ``M·ln10``.

    Parameters
    ----------
    t
        A template transform; those other than the identity and arcsinh are returned as
        they are.
    """
    if isinstance(t, Identity):
        return None, 1.0
    if isinstance(t, Arcsinh):
        m = 4.5
        ln10 = math.log(10.0)
        return GMLAsinh(T=t.cofactor * math.sinh(m * ln10), M=m, A=0.0), 1.0 / (m * ln10)
    return t, 1.0
