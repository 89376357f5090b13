"""``breastus-train descriptors-fit``: choose the descriptor rules and fit the malignancy likelihood.

Research use only, not for diagnosis. Reads the train and val splits only (never test), on ground-truth masks:

* rules: every threshold of a descriptor's rule (``BreastUSSegmentLib.descriptors``) is set in turn to the
  quantile (2.5% to 97.5% in steps of 2.5%) of its number on BrEaST train that gives the highest Cohen's
  kappa with the radiologists' reads, starting from the rule in the code, three rounds. The result is
  printed as the dicts to write in ``descriptors.py`` (the code's rules are the shipped ones; this command
  does not edit code), with the kappas on train and val;
* likelihood: logistic regression on the standardised numbers in ``FEATURES``, fitted on the lesion images of
  the train splits of every dataset given, for each L2 strength in ``PENALTIES``; the strength with the
  highest AUC on the pooled val splits is refitted on train and written as ``malignancy_likelihood.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from BreastUSSegmentLib.descriptors import RULES
from BreastUSSegmentLib.fileio import write_text_atomically
from BreastUSSegmentLib.likelihood import MODEL_PATH, LikelihoodModel

from .busi import load_manifest
from .descriptor_data import READ_DESCRIPTORS, cohen_kappa, describe_cases, roc_auc

# Numbers the likelihood uses: the main number of each descriptor, all without a unit.
FEATURES = ("solidity", "axis_ratio", "margin_irregularity", "depth_to_width", "echo_ratio_surround",
            "echo_spread", "posterior_ratio")
PENALTIES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # L2 strengths tried (on standardised numbers)
QUANTILES = np.arange(0.025, 0.976, 0.025)
ROUNDS = 3
RULE_DATASET = "BrEaST"  # the dataset with radiologists' reads
# The number each threshold of a rule cuts.
THRESHOLD_NUMBER = {
    "irregular_below_solidity": "solidity", "round_from_axis_ratio": "axis_ratio",
    "not_parallel_above_depth_to_width": "depth_to_width",
    "not_circumscribed_above_irregularity": "margin_irregularity",
    "anechoic_below_ratio": "echo_ratio_surround", "complex_from_dark_share": "dark_share",
    "heterogeneous_above_spread": "echo_spread", "hyperechoic_above_ratio": "echo_ratio_fat",
    "isoechoic_above_ratio": "echo_ratio_fat",
    "shadowing_below_ratio": "posterior_ratio", "enhancement_above_ratio": "posterior_ratio",
}


def rule_kappa(rows: list[dict], descriptor: str, rule: dict) -> float:
    """Kappa of ``rule``'s terms against the reads, over the rows with a read and numbers."""
    term = RULES[descriptor][0]
    pairs = [(term(row["numbers"], rule), row["reads"][descriptor]) for row in rows
             if row.get("numbers") and row.get("reads", {}).get(descriptor)]
    return cohen_kappa(*zip(*pairs)) if pairs else float("nan")


def choose_rule(rows: list[dict], descriptor: str) -> dict:
    """The descriptor's rule with each threshold set in turn to the quantile of highest kappa on ``rows``."""
    rule = dict(RULES[descriptor][1])
    for _ in range(ROUNDS):
        for key in rule:
            values = [row["numbers"][THRESHOLD_NUMBER[key]] for row in rows if row.get("numbers")]
            values = np.array([value for value in values if value is not None], dtype=float)
            candidates = [rule[key]] + [round(float(value), 4) for value in np.quantile(values, QUANTILES)]
            scores = [rule_kappa(rows, descriptor, {**rule, key: candidate}) for candidate in candidates]
            rule[key] = candidates[int(np.nanargmax(scores))]
    return rule


def feature_matrix(rows: list[dict], features=FEATURES) -> np.ndarray:
    """Numbers of ``rows`` (nan where not measured), one column per feature."""
    return np.array([[np.nan if row["numbers"].get(name) is None else row["numbers"][name] for name in features]
                     for row in rows], dtype=float)


def fit_logistic(x: np.ndarray, y: np.ndarray, penalty: float, iterations: int = 100) -> tuple[float, np.ndarray]:
    """Intercept and weights of an L2-penalised logistic regression (Newton's method; the intercept is free)."""
    design = np.column_stack([np.ones(len(x)), x])
    weights = np.zeros(design.shape[1])
    ridge = penalty * np.diag(np.r_[0.0, np.ones(x.shape[1])])
    for _ in range(iterations):
        probability = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -500, 500)))
        gradient = design.T @ (probability - y) + ridge @ weights
        hessian = design.T @ (design * (probability * (1 - probability))[:, None]) + ridge + 1e-9 * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), weights[1:]


def model_of(train: list[dict], penalty: float) -> LikelihoodModel:
    """The likelihood model fitted on ``train`` rows (missing numbers count as their mean), without notes."""
    x = feature_matrix(train)
    mean, scale = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    standard = np.nan_to_num((x - mean) / scale)
    y = np.array([row["label"] == "malignant" for row in train], dtype=float)
    intercept, weights = fit_logistic(standard, y, penalty)
    return LikelihoodModel(FEATURES, tuple(float(v) for v in mean), tuple(float(v) for v in scale),
                           tuple(round(float(w), 6) for w in weights), round(intercept, 6), {})


def likelihood_auc(model: LikelihoodModel, rows: list[dict]) -> float:
    described = [row for row in rows if row.get("numbers")]
    return roc_auc([model.probability(row["numbers"]) for row in described],
                   [row["label"] == "malignant" for row in described])


def fit(data_roots, split_path, model_path: Path, progress: bool = True, log=print) -> dict:
    """Choose the rules and fit the likelihood (see the module docstring); return what was chosen."""
    manifest = load_manifest(split_path)
    train = [row for row in describe_cases(data_roots, manifest.cases_for("train"), progress=progress) if row["found"]]
    val = [row for row in describe_cases(data_roots, manifest.cases_for("val"), progress=progress) if row["found"]]
    rules = {}
    rule_train = [row for row in train if row["dataset"] == RULE_DATASET]
    rule_val = [row for row in val if row["dataset"] == RULE_DATASET]
    for descriptor in READ_DESCRIPTORS:
        chosen = choose_rule(rule_train, descriptor) if rule_train else dict(RULES[descriptor][1])
        rules[descriptor] = {"rule": chosen, "train_kappa": rule_kappa(rule_train, descriptor, chosen),
                             "val_kappa": rule_kappa(rule_val, descriptor, chosen),
                             "code_val_kappa": rule_kappa(rule_val, descriptor, RULES[descriptor][1])}
        log(f"{descriptor}: {chosen}  kappa train {rules[descriptor]['train_kappa']:.3f}, "
            f"val {rules[descriptor]['val_kappa']:.3f} (rule in the code: val "
            f"{rules[descriptor]['code_val_kappa']:.3f})")
    models = {penalty: model_of(train, penalty) for penalty in PENALTIES}
    val_aucs = {penalty: likelihood_auc(model, val) for penalty, model in models.items()}
    for penalty, auc in val_aucs.items():
        log(f"likelihood L2 {penalty:g}: pooled val AUC {auc:.3f}")
    penalty = max(PENALTIES, key=lambda value: (val_aucs[value], value))  # ties: the stronger penalty
    datasets = sorted({row["dataset"] for row in train})
    notes = {
        "fitted_on": f"train splits of {', '.join(datasets)} ({len(train)} lesion images, ground-truth masks), "
                     f"split {Path(split_path).name} sha256 {manifest.sha256[:12]}",
        "l2_penalty": penalty,
        "chosen_by": f"highest pooled val AUC of L2 in {list(PENALTIES)}",
        "val_auc": {"pooled": round(val_aucs[penalty], 4), **{
            dataset: round(likelihood_auc(models[penalty], [r for r in val if r["dataset"] == dataset]), 4)
            for dataset in datasets}},
        "command": "breastus-train descriptors-fit",
    }
    model = replace(models[penalty], notes=notes)
    write_text_atomically(model_path, json.dumps(model.to_dict(), indent=1) + "\n")
    log(f"wrote {model_path} (L2 {penalty:g}, val AUC {val_aucs[penalty]:.3f}); weights: "
        + ", ".join(f"{name} {weight:+.3f}" for name, weight in zip(model.features, model.weights)))
    return {"rules": rules, "penalty": penalty, "val_aucs": val_aucs, "model": model}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a dataset folder of the split (BUSI or BrEaST); repeat for each")
    parser.add_argument("--split", type=Path, required=True, help="split file, e.g. Training/splits/busi_breast_split.json")
    parser.add_argument("--model", type=Path, default=MODEL_PATH,
                        help=f"where to write the likelihood model (default: the core's {MODEL_PATH.name})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    fit(args.data, args.split, args.model, progress=not args.no_progress)
    return 0
