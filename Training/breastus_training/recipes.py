"""Training recipes: named sets of ``train`` settings kept as TOML files (``--recipe NAME|FILE``).

``DEFAULTS`` is the built-in recipe (the paper's: BCE, Adam 1e-3, no schedule) used for every setting
that neither the recipe nor the command line gives; a recipe file sets any of the same keys (the option
names with ``_``), and a flag given on the command line overrides both. ``recipes/NAME.toml`` beside this
module are the named recipes (``v2``: the bundled model's).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from BreastUSSegmentLib.model import ModelConfig

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

RECIPE_FOLDER = Path(__file__).resolve().parent / "recipes"

DEFAULTS = {
    "epochs": 100,
    "batch_size": 8,
    "lr": 1e-3,
    "loss": "bce",
    "scheduler": "none",
    "augment": "standard",
    "augment_off": [],
    "precision": "auto",
    "patience": 20,
    "input_size": [256],
    "base_channels": ModelConfig.base_channels,
    "depth": ModelConfig.depth,
    "dropout": ModelConfig.dropout,
    "upsample": ModelConfig.upsample,
    "lesion_head_weight": 0.0,
    "deep_supervision": 0.0,
    "normal_repeat": 1,
    "swa_start": 0,
    "seed": 0,
}


def recipe_names() -> list[str]:
    """The named recipes shipped with the package."""
    return sorted(path.stem for path in RECIPE_FOLDER.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The file of a named recipe, or ``name`` itself when it is a path to a ``.toml`` file."""
    path = RECIPE_FOLDER / f"{name}.toml"
    if path.is_file():
        return path
    if name.endswith(".toml") and Path(name).is_file():
        return Path(name)
    raise ValueError(f"--recipe {name}: no such recipe (named recipes: {', '.join(recipe_names())}; "
                     "or give the path of a .toml file)")


def load_recipe(name: str) -> tuple[dict, dict]:
    """``(settings, record)``: the recipe's settings, checked against ``DEFAULTS``, and where they came from."""
    path = recipe_path(name)
    if tomllib is None:
        raise ValueError("--recipe needs Python 3.11 or later (its tomllib reads the recipe files)")
    data = path.read_bytes()
    try:
        settings = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"recipe {path}: {error}") from error
    for key, value in settings.items():
        if key not in DEFAULTS:
            raise ValueError(f"recipe {path}: unknown setting {key!r} (known: {', '.join(DEFAULTS)})")
        expected = DEFAULTS[key]
        numeric = isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool)
        if not (type(value) is type(expected) or numeric):
            raise ValueError(f"recipe {path}: {key} must be a {type(expected).__name__}, got {value!r}")
        if numeric:
            settings[key] = float(value)
    return settings, {"name": name, "file": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def resolve_settings(given: dict, recipe: str | None) -> dict:
    """Every recipe setting: the command line's value where given (not None), else the recipe's, else the
    default."""
    settings = dict(DEFAULTS)
    if recipe:
        settings.update(load_recipe(recipe)[0])
    settings.update({key: value for key, value in given.items() if key in DEFAULTS and value is not None})
    return settings


def recipe_record(recipe: str | None, config: dict) -> dict | None:
    """What a run records of its recipe: name, file, sha256, settings, and those the command line overrode."""
    if not recipe:
        return None
    settings, record = load_recipe(recipe)
    square = lambda size: list(size) * 2 if len(size) == 1 else list(size)  # noqa: E731
    overridden = [key for key, value in settings.items()
                  if (square(value) != square(config[key]) if key == "input_size" else value != config[key])]
    return {**record, "settings": settings, "overridden": overridden}
