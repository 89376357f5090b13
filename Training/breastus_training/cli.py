"""Command line ``breastus-train`` (also ``python -m breastus_training``).

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
and ``run(args) -> exit code``; add a subcommand by listing its module in
``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

from . import (
    box_rule, convert, descriptor_check, descriptor_fit, ensemble, evaluate, export, intervals, onnx_graph, prepare,
    sweep, train,
)

SUBCOMMANDS = {
    "convert": (convert, "rewrite BrEaST-Lesions_USG as published (TCIA) into the folder layout 'prepare' reads"),
    "prepare": (prepare, "index the dataset folders (BUSI, BrEaST), group duplicates and write the train/val/test "
                         "split manifest"),
    "train": (train, "train the Attention U-Net on a split manifest (resumes an existing run folder)"),
    "ensemble": (ensemble, "join trained models of one architecture into one ensemble weights file (probabilities averaged)"),
    "sweep": (sweep, "score a grid of post-processing settings on val from one inference pass, to choose them"),
    "evaluate": (evaluate, "score saved weights on a subset of the split; write report.json, report.md and figures"),
    "box-rule": (box_rule, "score the box prompt's minimum confidence on lesion boxes and on boxes on lesion-free tissue"),
    "intervals": (intervals, "95% intervals of an evaluation's numbers (bootstrap; exact binomial for shares), from its report.json"),
    "descriptors-fit": (descriptor_fit, "choose the lexicon descriptor rules on train and fit the research-use "
                                        "malignancy likelihood (train, L2 chosen on val)"),
    "descriptors": (descriptor_check, "check the lexicon descriptors against radiologists' reads and the malignancy "
                                      "likelihood's AUC on a subset, with 95% intervals (research use)"),
    "export": (export, "write evaluated weights as the bundled model, with the evaluation in its model card"),
    "onnx": (onnx_graph, "write a model's ONNX graph beside its weights (listed in its model card) and measure each "
                         "backend's agreement with PyTorch float32 on val"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastus-train", description="Train and evaluate the SlicerBreastUS lesion "
                                     "segmentation model on breast ultrasound datasets (BUSI, BrEaST).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        # argparse formats a help text with %: "95% intervals" must be written "95%% intervals" there
        subparser = subparsers.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:  # bad input: dataset, manifest, settings, resume (DatasetError, ResumeError, ...)
        print(f"breastus-train {args.command}: error: {error}", file=sys.stderr)
        return 2
    except train.TrainingDiverged as error:  # the run itself failed; what it saved before is kept
        print(f"breastus-train {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
