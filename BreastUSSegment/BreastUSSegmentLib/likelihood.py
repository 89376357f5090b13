"""Research-use malignancy likelihood of one lesion from its descriptor numbers (numpy only).

RESEARCH USE ONLY, NOT FOR DIAGNOSIS. A logistic regression on standardised
descriptor numbers (see :mod:`.descriptors`): ``p = 1 / (1 + exp(-(b + sum
w_i (x_i - mean_i) / scale_i)))``. Its weights are plain numbers in
``bundled/malignancy_likelihood.json``, written by ``breastus-train
descriptors-fit``: fitted on the train splits of BUSI and BrEaST (ground-truth
masks), the L2 regularisation chosen on their val splits. Only numbers without
a unit enter (BUSI gives no pixel size, so sizes in mm cannot). A number that
could not be measured (None) counts as its training mean.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

MODEL_PATH = Path(__file__).resolve().parent / "bundled" / "malignancy_likelihood.json"
FORMAT_VERSION = 1
RESEARCH_USE = "research use only, not for diagnosis"


@dataclass(frozen=True)
class LikelihoodModel:
    """Weights of the logistic regression, one per feature (a descriptor number's name)."""

    features: tuple
    mean: tuple
    scale: tuple
    weights: tuple
    intercept: float
    notes: dict  # how it was fitted: data, regularisation, val AUC

    def __post_init__(self) -> None:
        sizes = {len(self.features), len(self.mean), len(self.scale), len(self.weights)}
        if len(sizes) != 1 or not self.features:
            raise ValueError("a likelihood model needs one mean, scale and weight per feature")
        if any(not (scale > 0) for scale in self.scale):
            raise ValueError("every feature scale must be positive")

    def linear(self, numbers: dict) -> float:
        """The log-odds of malignancy for ``numbers`` (a missing or None number counts as its mean)."""
        total = self.intercept
        for name, mean, scale, weight in zip(self.features, self.mean, self.scale, self.weights):
            value = numbers.get(name)
            if value is not None and math.isfinite(value):
                total += weight * (value - mean) / scale
        return total

    def probability(self, numbers: dict) -> float:
        """The likelihood of malignancy, between 0 and 1."""
        return 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, self.linear(numbers)))))

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "research_use": RESEARCH_USE,
                "features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "weights": list(self.weights), "intercept": self.intercept, "notes": self.notes}


def load_likelihood_model(path: str | os.PathLike = MODEL_PATH) -> LikelihoodModel:
    """The model stored at ``path`` (the bundled one by default); ValueError naming the file when unusable."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {values.get('format_version')!r}, expected {FORMAT_VERSION}")
        return LikelihoodModel(
            features=tuple(str(name) for name in values["features"]),
            mean=tuple(float(v) for v in values["mean"]), scale=tuple(float(v) for v in values["scale"]),
            weights=tuple(float(v) for v in values["weights"]), intercept=float(values["intercept"]),
            notes=dict(values.get("notes", {})),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a usable malignancy likelihood model: {error}") from None


def malignancy_likelihood(numbers: dict, model: LikelihoodModel | None = None) -> float:
    """Research-use likelihood of malignancy of the lesion with descriptor ``numbers`` (bundled model by default)."""
    return (model or load_likelihood_model()).probability(numbers)
