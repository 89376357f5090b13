"""One definition of the post-processing flags: breastus-segment, evaluate and sweep take the same ones."""

import argparse
from dataclasses import fields

import pytest

from BreastUSSegmentLib import cli
from BreastUSSegmentLib.options import PostprocessOptions, settings_from_args
from breastus_training import evaluate, sweep

FLAGS = ["--threshold", "0.6", "--min-area-fraction", "0.01", "--min-confidence", "0.7", "--keep-largest", "no",
         "--fill-holes", "no", "--smoothing-sigma", "0", "--min-lesion-probability", "0.2", "--no-test-time-flip"]
EXPECTED = {"threshold": 0.6, "min_area_fraction": 0.01, "min_mean_probability": 0.7, "keep_largest": False,
            "fill_holes": False, "smoothing_sigma": 0.0, "min_lesion_probability": 0.2, "test_time_flip": False}
REQUIRED = {
    "segment": ["frame.png", "-o", "out"],
    "evaluate": ["--data", "d", "--split", "s.json", "--weights", "w.safetensors", "--output", "o"],
    "sweep": ["--data", "d", "--split", "s.json", "--weights", "w.safetensors"],
}


def parse(front_end: str, arguments: list) -> dict:
    if front_end == "segment":
        parser = cli.build_parser()
    else:
        parser = argparse.ArgumentParser()
        (evaluate if front_end == "evaluate" else sweep).add_arguments(parser)
    return settings_from_args(parser.parse_args(REQUIRED[front_end] + arguments))


def test_every_setting_of_the_card_has_one_flag():
    assert set(EXPECTED) == {field.name for field in fields(PostprocessOptions)}


@pytest.mark.parametrize("front_end", ["segment", "evaluate"])
def test_segment_and_evaluate_take_every_settings_flag(front_end):
    assert parse(front_end, FLAGS) == EXPECTED
    assert parse(front_end, []) == dict.fromkeys(EXPECTED)  # none given: every setting is the model card's


def test_sweep_takes_the_same_flags_with_several_values_and_its_older_plural_names():
    listed = {name: value if name == "test_time_flip" else [value] for name, value in EXPECTED.items()}
    assert parse("sweep", FLAGS) == listed
    settings = parse("sweep", ["--thresholds", "0.4", "0.6", "--min-confidences", "0", "0.7", "--keep-largest", "yes",
                               "no", "--min-area-fractions", "0.01", "--min-lesion-probabilities", "0", "0.5"])
    assert settings == {**dict.fromkeys(EXPECTED), "threshold": [0.4, 0.6], "min_mean_probability": [0.0, 0.7],
                        "keep_largest": [True, False], "min_area_fraction": [0.01],
                        "min_lesion_probability": [0.0, 0.5]}
