"""``breastus-train ensemble``: join trained models of one architecture into one ensemble weights file.

Each member's weights are loaded (its sha256 verified against its model card)
and written side by side into one ``.safetensors`` file whose model card says
``members: N`` (see the core's ``AttentionUNetEnsemble``): every frame then goes
through all N networks and their probabilities, attention maps and lesion-head
probabilities are averaged. Members must share architecture, input size, split
and datasets. The card's training block keeps each member's own provenance, and
the datasets and split they share. Its post-processing is untuned: choose it with
``sweep`` on val, then ``evaluate`` and ``export`` the file like any model.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from BreastUSSegmentLib.model import AttentionUNetEnsemble
from BreastUSSegmentLib.modelcard import ModelCard, WeightsError, card_path_for, read_model_card
from BreastUSSegmentLib.options import UNTUNED_POSTPROCESSING
from BreastUSSegmentLib.weights import load_model, save_model

# Provenance the members share, kept once in the ensemble's training block (taken from the first member).
SHARED_TRAINING_KEYS = ("dataset", "datasets", "split", "split_sha256")


class EnsembleError(ValueError):
    """The models cannot be joined, or the output would overwrite a file."""


def join_models(weights: list[str | os.PathLike], output: str | os.PathLike, force: bool = False) -> ModelCard:
    """Write ``output`` (.safetensors) holding the models ``weights`` as one ensemble, and its card; return the card."""
    paths, output = [Path(path) for path in weights], Path(output)
    if len(paths) < 2:
        raise EnsembleError(f"an ensemble needs at least two --weights files, got {len(paths)}")
    if output.suffix != ".safetensors":
        raise EnsembleError(f"the output must be a .safetensors file, got {output}")
    existing = [path for path in (output, card_path_for(output)) if path.exists()]
    if existing and not force:
        raise EnsembleError(f"{existing[0]} already exists; pass --force to replace it")
    if any(path.resolve() == output.resolve() for path in paths):
        raise EnsembleError(f"the output {output} is one of the --weights files; write the ensemble elsewhere")
    check_members(paths, [read_model_card(path) for path in paths])  # the small cards first, before any weights
    loaded = [load_model(path, device="cpu") for path in paths]
    first_card = loaded[0][1]
    ensemble = AttentionUNetEnsemble(replace(first_card.model_config, members=len(paths)))
    for member, (model, _) in zip(ensemble.members, loaded):
        member.load_state_dict(model.state_dict(), strict=True)
    training = {key: first_card.training[key] for key in SHARED_TRAINING_KEYS if key in first_card.training}
    training["members"] = [{"weights": str(path), "sha256": card.sha256, "training": card.training}
                           for path, (_, card) in zip(paths, loaded)]
    return save_model(ensemble.eval(), output, input_size=tuple(first_card.input_size),
                      postprocessing=UNTUNED_POSTPROCESSING, training=training,
                      name=f"{first_card.name} (ensemble of {len(paths)})")


def check_members(paths: list[Path], cards: list[ModelCard]) -> None:
    """EnsembleError naming the file unless the models can be averaged: distinct single networks of one
    architecture and input size, trained on the same split and datasets."""
    first_path, first_card = paths[0], cards[0]
    seen = {}
    for path, card in zip(paths, cards):
        if card.sha256 in seen:
            raise EnsembleError(f"{path} and {seen[card.sha256]} hold the same weights (sha256 {card.sha256[:12]}…)")
        seen[card.sha256] = path
        if card.model_config.members != 1:
            raise EnsembleError(f"{path} is already an ensemble of {card.model_config.members}; join single models")
        if card.model_config != first_card.model_config or card.input_size != first_card.input_size:
            raise EnsembleError(
                f"{path} has architecture {card.model_config} at input size {card.input_size}, but {first_path} has "
                f"{first_card.model_config} at {first_card.input_size}; members must share both")
        for what, value, first in (("split sha256", card.training.get("split_sha256"),
                                    first_card.training.get("split_sha256")),
                                   ("datasets", dataset_names(card), dataset_names(first_card))):
            if value != first:
                raise EnsembleError(f"{path} was trained with {what} {value!r}, but {first_path} with {first!r}; "
                                    "members must share them")


def dataset_names(card: ModelCard) -> list[str]:
    """Names of the datasets a model was trained on, as its card's training block lists them."""
    return sorted(item["name"] for item in card.training.get("datasets", []))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, action="append", required=True,
                        help="a member's .safetensors (with its model card beside it); repeat for each, at least two")
    parser.add_argument("--output", type=Path, required=True, help="the ensemble's .safetensors, e.g. runs/e1/best.safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    try:
        card = join_models(args.weights, args.output, args.force)
    except WeightsError as error:  # a member that does not load is bad input like any other
        raise EnsembleError(str(error)) from error
    print(f"wrote {args.output} and {card_path_for(args.output)}: {card.model_config.members} members, "
          f"post-processing untuned (choose it with 'breastus-train sweep')")
    print(f"sha256 {card.sha256}")
    return 0
