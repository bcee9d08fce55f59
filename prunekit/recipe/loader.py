"""Read a YAML recipe (safe_load), apply ``--set key=value`` overrides, validate the top-level keys."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Iterable, Optional

import yaml

from ..errors import ConfigError
from .sections import RUNNER_SECTIONS, SCALAR_KEYS
from .stages import STAGES


def load_recipe(source, overrides: Optional[Iterable[str]] = None) -> dict:
    """A recipe dict from a YAML path or a dict, with overrides applied and top-level keys checked."""
    if isinstance(source, dict):
        recipe = copy.deepcopy(source)
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not a recipe file" if path.is_dir() else "does not exist"
            raise ConfigError(f"recipe file {str(path)!r} {what}")
        try:
            recipe = yaml.safe_load(recipe_text(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(recipe, dict):
        raise ConfigError("a recipe must be a YAML mapping of sections (model:, data:, prune:, ...)")
    for item in overrides or []:
        apply_override(recipe, item)
    import_stage_modules(recipe.get("plugins") or [])
    check_top_level(recipe)
    return recipe


def apply_override(recipe: dict, item: str) -> None:
    """``a.b.c=value``: value parsed as YAML (numbers, booleans, lists); intermediate mappings created."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. prune.ratio=0.8), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = recipe
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {key}: {part!r} is not a mapping in the recipe")
        node = node[part]
    node[parts[-1]] = value


# modules whose import registers the built-in recipe stages (train:, prune:, reduce:, schedule:, search:, ...);
# they live in the recipe driver and import the library packages they run, never the reverse
FEATURE_PACKAGES = ("prunekit.recipe.stages.builtin", "prunekit.recipe.stages.reduce", "prunekit.recipe.stages.regularize",
                    "prunekit.recipe.stages.analyze", "prunekit.recipe.stages.schedule", "prunekit.recipe.stages.search",
                    "prunekit.recipe.stages.quantize", "prunekit.recipe.stages.compress")


def import_builtin_stages() -> None:
    """Import the modules of the built-in stages (registers them in ``STAGES``; a no-op once done)."""
    for name in FEATURE_PACKAGES:
        importlib.import_module(name)


def import_stage_modules(plugins: Iterable[str] = ()) -> None:
    """Import the built-in stage modules and the recipe's ``plugins:`` modules (user stages, models, criteria)."""
    import_builtin_stages()
    if isinstance(plugins, str) or not isinstance(plugins, (list, tuple)):
        raise ConfigError(f"recipe key 'plugins' must be a list of importable module names, got {plugins!r}")
    from ..models import cwd_on_path

    cwd_on_path()
    for name in plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"recipe plugin {name!r} cannot be imported: {exc}") from exc


def allowed_top_level() -> list:
    return sorted(set(RUNNER_SECTIONS) | set(SCALAR_KEYS) | {"data"} | set(STAGES.names()))


def check_top_level(recipe: dict) -> None:
    allowed = allowed_top_level()
    for key, value in recipe.items():
        if key not in allowed:
            raise ConfigError(f"unknown recipe key {key!r}; allowed top-level keys: {', '.join(allowed)}")
        if key in SCALAR_KEYS and value is not None and not isinstance(value, SCALAR_KEYS[key]):
            raise ConfigError(f"recipe key {key!r} must be a {SCALAR_KEYS[key].__name__}, got {value!r}")


def recipe_text(path: Path) -> str:
    """The recipe file's text; a binary or undecodable file is a :class:`ConfigError`, not a traceback."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {str(path)!r}: {exc.strerror or exc}") from exc
    if b"\x00" in raw:
        raise ConfigError(f"recipe {str(path)!r} is a binary file, not YAML text; give the path of a .yaml recipe")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "save it as UTF-8") from exc
