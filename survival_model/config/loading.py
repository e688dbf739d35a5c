"""Reading configuration files: the params file (with an institutions catalog, overlays and dotted
overrides) into :class:`Params`, relative paths resolved against the file's folder, validation errors
formatted to name the key; and the local services file. The only module that parses YAML."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from survival_model.config.base import StrictModel
from survival_model.config.params import Params
from survival_model.errors import ConfigError


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and the section it is in)"
        elif "input" in err and not isinstance(err["input"], dict | list):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  - {loc or '<top level>'}: {msg}")
    return "\n".join(lines)


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


M = TypeVar("M", bound=BaseModel)


def resolve_paths(model: M, base: Path) -> M:
    """A copy of ``model`` with every ``Path`` field, at any depth (sub-models, and mappings or lists of them),
    made absolute against ``base``: decided by the field's type, so a new path field cannot stay relative by
    accident. Absolute paths (and ``~``) are kept as they are (``~`` expanded)."""
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        resolved = _resolve_value(value, base)
        if resolved is not value:
            update[name] = resolved
    return model.model_copy(update=update) if update else model


def _resolve_value(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return _resolve(base, value)
    if isinstance(value, BaseModel):
        return resolve_paths(value, base)
    if isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        return {k: _resolve_value(v, base) for k, v in value.items()}
    if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
        return [_resolve_value(v, base) for v in value]
    return value


def read_catalog(path: Path) -> dict[str, Any]:
    """An institutions catalog file: a mapping of institution name -> declaration, as under ``institutions:``
    in a params file (or under a top-level ``institutions:`` key). Its relative paths are relative to it."""
    data = _read_sections(path, "institutions catalog")
    raw = data["institutions"] if set(data) == {"institutions"} else data
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the institutions must be a mapping of name -> declaration")
    return raw


def parse_params(data: Mapping[str, Any], *, base_dir: Path, source: str = "params",
                 institutions_dir: Path | None = None) -> Params:
    """Validate a parsed mapping into :class:`Params`, resolving relative paths against ``base_dir`` (the
    institutions' against ``institutions_dir`` when they came from a catalog file there)."""
    try:
        params = Params.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    if institutions_dir is not None:
        params = params.model_copy(update={"institutions": {
            name: resolve_paths(inst, institutions_dir) for name, inst in params.institutions.items()}})
    return resolve_paths(params, base_dir)


def load_params(path: Path | str, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read ``params.yaml`` once into validated models.

    ``overrides`` are dotted keys (``{"work_dir": "/tmp/w", "synthetic.shape": [48, 48, 31]}``)
    applied before validation, so they are validated like the file itself.
    """
    path = Path(path)
    data = _read_sections(path, "params file", " (pass --params or create it from the README)")
    catalog, institutions_dir = data.get("institutions"), None
    if isinstance(catalog, str):  # the institutions live in their own catalog file
        catalog_path = _resolve(path.resolve().parent, Path(catalog))
        data["institutions"], institutions_dir = read_catalog(catalog_path), catalog_path.parent
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    source = str(path) if institutions_dir is None else f"{path} (institutions from {catalog})"
    return parse_params(data, base_dir=path.resolve().parent, source=source, institutions_dir=institutions_dir)


def _read_sections(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A YAML file whose top level is a mapping of sections (a params file or an overlay)."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


# --------------------------------------------------------------------------------------------------
# Local services (infra/local/services.yaml) and command-line overrides
# --------------------------------------------------------------------------------------------------


class ServiceSpec(StrictModel):
    """One long-lived local server: its command line, environment and health-check URL (templates)."""

    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    health_url: str
    ui_url: str


class ServicesSpec(StrictModel):
    services: dict[str, ServiceSpec]


def load_services(path: Path) -> ServicesSpec:
    """Read the local services file (``infra/local/services.yaml``)."""
    if not Path(path).is_file():
        raise ConfigError(f"services file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return ServicesSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path))) from None


#: The BraTS-size preset shipped with the package (``--realistic``): an overlay file like any other.
REALISTIC_OVERLAY = Path(__file__).resolve().parent.parent / "resources" / "realistic.yaml"


def overlay_overrides(path: Path | str) -> dict[str, Any]:
    """A params overlay file (the sections and keys it changes, nested as in ``params.yaml``) as dotted
    overrides: ``{"preprocess": {"n4": {"control_points": 4}}}`` -> ``{"preprocess.n4.control_points": 4}``.
    A mapping is walked down to its leaves, so an overlay changes one key of a section and keeps the rest;
    the keys are validated with the params file they are applied to (an unknown one is an error naming it)."""
    data = _read_sections(Path(path), "overlay file")
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, dotted + ".")
            else:
                out[dotted] = value

    walk(data, "")
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"synthetic.shape=[48, 48, 31]"`` -> ``("synthetic.shape", [48, 48, 31])`` (value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return key.strip(), value
