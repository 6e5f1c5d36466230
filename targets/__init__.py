"""Embedded target profiles: one validated YAML file per device, `targets/<name>.yaml`.

A name may carry a power mode after a colon (`jetson-tx2:maxq`); without one the profile's
`default_mode` applies. Loading validates against `targets.schema.SCHEMA` and a bad profile
raises `ProfileError` naming the field. A user's own profile of a shipped target,
`$SIGDL_HOME/targets/<name>.yaml` (what `sigdl targets calibrate host` writes), takes
precedence over the shipped file and is validated the same way.

    from targets import load_profile, profile_names
    profile = load_profile("jetson-tx2:maxq")
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema

# the leaf modules every loader of ours shares (they import nothing else of SigDL)
from sigdl.core import settings
from sigdl.core.errors import InputError, one_line, short
from sigdl.core.yamlio import load_yaml_file
from targets.schema import SCHEMA

HERE = Path(__file__).resolve().parent


class ProfileError(InputError):
    """An unknown target, an unknown power mode, or a profile that breaks the schema."""


def profile_names() -> list[str]:
    """Every profile shipped in this folder, sorted."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def validate(data: object, where: str) -> None:
    """Raise ProfileError naming the first field (as a dotted path) that breaks the schema."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        field = ".".join(str(p) for p in first.absolute_path) or "<top level>"
        raise ProfileError(f"{where}: field {short(field)}: {one_line(first.message, 160)}")


def load_file(path: str | Path) -> dict:
    """Read and validate one profile file (no power mode applied)."""
    path = Path(path)
    try:
        data = load_yaml_file(path)
    except InputError as exc:
        raise ProfileError(str(exc)) from None
    validate(data, str(path))
    if data["native_precision"] not in data["precisions"]:
        raise ProfileError(f"{path}: field 'native_precision' is not in 'precisions'")
    mode = data.get("default_mode")
    if mode is not None and mode not in data.get("modes", {}):
        raise ProfileError(f"{path}: field 'default_mode': {mode!r} is not one of 'modes'")
    return data


def user_profile_path(name: str) -> Path:
    """Where a user's own profile of target `name` lives: $SIGDL_HOME/targets/<name>.yaml."""
    return settings.SIGDL_HOME.get() / "targets" / f"{name}.yaml"


def profile_path(name: str) -> Path:
    """The file target `name` (optionally `name:mode`) loads from: the user's own profile
    where one exists, else the shipped one."""
    base = str(name).strip().lower().partition(":")[0]
    if base not in profile_names():  # never a path: '../x' or a name too long for the disk
        raise ProfileError(f"unknown target {short(base)}; available: {', '.join(profile_names())}")
    user = user_profile_path(base)
    return user if user.is_file() else HERE / f"{base}.yaml"


@functools.cache
def _load_cached(path: Path, mtime_ns: int) -> dict:
    """One profile file as it was at `mtime_ns` (a rewritten user profile is read again)."""
    data = load_file(path)
    if data["name"] != path.stem:
        raise ProfileError(f"{path}: field 'name': {short(data['name'])} is not {path.stem!r}")
    return data


def _load(name: str) -> dict:
    path = profile_path(name)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        reason = one_line(exc.strerror or str(exc), 80)
        raise ProfileError(f"{path}: cannot be read ({reason})") from None
    return _load_cached(path, mtime_ns)


def load_profile(name: str) -> dict:
    """The profile `name` (optionally `name:mode`) with its power mode applied; a fresh copy."""
    base, _, mode = str(name).strip().lower().partition(":")
    profile = copy.deepcopy(_load(base))
    mode = mode or profile.get("default_mode")
    if mode:
        modes = profile.get("modes", {})
        if mode not in modes:
            known = ", ".join(modes) or "none"
            raise ProfileError(f"target {base!r} has no power mode {short(mode)}; modes: {known}")
        apply_mode(profile, mode)
    return profile


def apply_mode(profile: dict, mode: str) -> None:
    """Scale peak throughput by the mode's clock and cores; take its power figures."""
    override = profile["modes"][mode]
    compute = profile["compute"]
    scale = override.get("clock_ghz", compute["clock_ghz"]) / compute["clock_ghz"]
    scale *= override.get("cores", compute["cores"]) / compute["cores"]
    compute["peak_gops"] = {p: v * scale for p, v in compute["peak_gops"].items()}
    compute["clock_ghz"] = override.get("clock_ghz", compute["clock_ghz"])
    compute["cores"] = override.get("cores", compute["cores"])
    for key in ("idle_w", "active_w"):
        if key in override:
            profile["power"][key] = override[key]
    profile["mode"] = mode
