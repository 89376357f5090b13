"""The post-processing settings (:class:`PostprocessOptions`), without the algorithms that apply them.

A model card owns one complete set (see :mod:`.modelcard`); :mod:`.postprocessing`
applies them; ``add_settings_arguments`` gives every command line the same flag
for each. This module imports only the standard library, so reading a card
needs neither scipy nor PyTorch.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class PostprocessOptions:
    """The settings that turn the network's output into a mask, chosen on val for each model.

    No defaults here: a model's own come from its model card.
    """

    threshold: float  # a pixel is lesion when its probability is at least this
    min_area_fraction: float  # components below this fraction of the frame are dropped; 0 keeps all
    min_mean_probability: float  # components whose mean probability is below this are dropped; 0 keeps all
    keep_largest: bool  # keep only the largest component
    fill_holes: bool
    smoothing_sigma: float  # Gaussian sigma in pixels of a 256-pixel frame; 0 disables
    # frames whose lesion-head probability is below this get an empty mask; 0 keeps all (needs a lesion head)
    min_lesion_probability: float
    test_time_flip: bool  # average the network's output with that of the horizontally mirrored frame

    def __post_init__(self) -> None:
        if not isinstance(self.test_time_flip, bool):
            raise ValueError(f"test_time_flip must be true or false, got {self.test_time_flip!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be strictly between 0 and 1, got {self.threshold}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {self.min_area_fraction}")
        if not 0.0 <= self.min_mean_probability < 1.0:
            raise ValueError(f"min_mean_probability must be in [0, 1), got {self.min_mean_probability}")
        if not 0.0 <= self.min_lesion_probability < 1.0:
            raise ValueError(f"min_lesion_probability must be in [0, 1), got {self.min_lesion_probability}")
        if self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {self.smoothing_sigma}")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **overrides) -> "PostprocessOptions":
        """A validated copy with the given settings changed; a setting given as None keeps its value."""
        return replace(self, **{name: value for name, value in overrides.items() if value is not None})

    @classmethod
    def from_dict(cls, values: dict) -> "PostprocessOptions":
        """Options from a model card's ``postprocessing`` block; every setting must be there (unknown keys are ignored),
        except those added later (``LATER_SETTINGS``), which cards written before them mean as their value there."""
        values = {**LATER_SETTINGS, **values}
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"the post-processing block lacks {', '.join(missing)}")
        return cls(**{name: values[name] for name in names})


# Settings added after the first model cards, with the value that gives the behaviour before them.
LATER_SETTINGS = {"min_lesion_probability": 0.0, "test_time_flip": False}

# What ``train`` writes into the card of a new model, until ``sweep`` on val and ``export`` choose its own.
UNTUNED_POSTPROCESSING = PostprocessOptions(
    threshold=0.5,
    min_area_fraction=0.005,  # chosen on BUSI val
    min_mean_probability=0.0,
    keep_largest=True,
    fill_holes=True,
    smoothing_sigma=1.5,
    min_lesion_probability=0.0,
    test_time_flip=False,
)


def check_lesion_head(options: PostprocessOptions, has_lesion_head: bool) -> None:
    """ValueError when ``options`` ask for the lesion head's probability and the model has no lesion head."""
    if options.min_lesion_probability > 0 and not has_lesion_head:
        raise ValueError(f"min_lesion_probability {options.min_lesion_probability} needs a model with a lesion head; "
                         "this model has none (use 0)")


# ---------------------------------------------------------------- command-line flags

# Each setting's flag, shared by breastus-segment, breastus-train evaluate and sweep (which takes several values
# per flag): (field, flag, metavar or None for yes/no, help, older plural name sweep still accepts).
SETTING_FLAGS = (
    ("threshold", "--threshold", "T", "probability threshold", "--thresholds"),
    ("min_area_fraction", "--min-area-fraction", "A",
     "drop found regions smaller than this fraction of the frame, 0 keeps all", "--min-area-fractions"),
    ("min_mean_probability", "--min-confidence", "P",
     "drop found regions whose mean probability is below P, 0 keeps all", "--min-confidences"),
    ("keep_largest", "--keep-largest", None, "keep only the largest region", None),
    ("fill_holes", "--fill-holes", None, "fill holes in the lesion", None),
    ("smoothing_sigma", "--smoothing-sigma", "S",
     "smooth the boundary: Gaussian sigma in pixels of a 256-pixel frame, 0 does not", None),
    ("min_lesion_probability", "--min-lesion-probability", "P",
     "models with a lesion head: no lesion on a frame whose image-level lesion probability is below P, "
     "0 keeps all", "--min-lesion-probabilities"),
)
YES_NO = ("yes", "no")


def add_settings_arguments(parser, several: bool = False) -> None:
    """Add one flag per post-processing setting to the argparse ``parser`` (dest: the field's name; not given:
    the model card's value). With ``several`` each flag but ``--test-time-flip`` takes a list (``sweep``)."""
    group = parser.add_argument_group("post-processing (each setting not given is the model card's)")
    for name, flag, metavar, text, plural in SETTING_FLAGS:
        flags = [flag, plural] if several and plural else [flag]
        nargs = "+" if several else None
        if metavar is None:
            group.add_argument(*flags, dest=name, nargs=nargs, choices=YES_NO, help=f"{text}: yes or no")
        else:
            group.add_argument(*flags, dest=name, nargs=nargs, type=float, metavar=metavar, help=text)
    group.add_argument("--test-time-flip", dest="test_time_flip", action=argparse.BooleanOptionalAction, default=None,
                       help="average with a horizontally flipped pass")


def settings_from_args(args) -> dict:
    """The settings ``add_settings_arguments`` read, by field name: a value (or list), None when not given."""
    settings = {}
    for name, _flag, metavar, *_ in SETTING_FLAGS:
        given = getattr(args, name)
        if metavar is None and given is not None:  # a yes/no setting
            given = [item == "yes" for item in given] if isinstance(given, list) else given == "yes"
        settings[name] = given
    settings["test_time_flip"] = args.test_time_flip
    return settings
