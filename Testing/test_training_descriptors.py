"""descriptors-fit and descriptors end to end on a tiny synthetic BrEaST with radiologists' reads."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from breastus_training import cli
from breastus_training.busi import cases_sha256
from breastus_training.descriptor_data import cohen_kappa, read_reads, roc_auc
from breastus_training.intervals import bootstrap_interval

SIZE = (96, 112)
SPLITS = ["train"] * 12 + ["val"] * 6 + ["test"] * 8


def lesion(malignant: bool) -> np.ndarray:
    rows, cols = np.mgrid[: SIZE[0], : SIZE[1]]
    center = (40, 56)
    if malignant:  # spiculated, taller than wide
        angle = np.arctan2(rows - center[0], cols - center[1])
        reach = 22 * (1.0 - 0.45 * (0.5 + 0.5 * np.cos(7 * angle)))
        return np.hypot((rows - center[0]) / 1.2, cols - center[1]) <= reach
    return ((rows - center[0]) / 10.0) ** 2 + ((cols - center[1]) / 24.0) ** 2 <= 1.0  # wide oval


def write_breast_with_reads(root, count=len(SPLITS)):
    """BrEaST's layout with reads: odd cases malignant spiculated stars casting a shadow, even ones benign
    wide ovals with enhancement; and a split manifest holding them (train, val, test in SPLITS' order)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    rows, cases = [], []
    for number in range(1, count + 1):
        name, malignant = f"case{number:03d}", number % 2 == 1
        mask = lesion(malignant)
        frame = 120 * rng.uniform(0.85, 1.15, SIZE)
        frame[mask] *= 0.5
        below = np.zeros(SIZE, bool)
        lesion_rows, lesion_cols = np.nonzero(mask)
        below[lesion_rows.max() + 1:, lesion_cols.min():lesion_cols.max() + 1] = True
        frame[below] *= 0.45 if malignant else 1.9
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
        rows.append({"Image_filename": f"{name}.png", "Pixel_size": "0.01",
                     "Shape": "irregular" if malignant else "oval",
                     "Margin": "not circumscribed - spiculated" if malignant else "circumscribed",
                     "Echogenicity": "hypoechoic", "Posterior_features": "shadowing" if malignant else "enhancement",
                     "BIRADS": "5" if malignant else "3", "Classification": "malignant" if malignant else "benign"})
        cases.append({"id": name, "label": rows[-1]["Classification"], "image": f"images/{name}.png",
                      "masks": [f"masks/{name}_mask.png"], "group": number, "split": SPLITS[number - 1],
                      "dataset": "BrEaST", "pixel_size_mm": 0.1})
    with open(root / "cases.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    split = root.parent / "split.json"
    split.write_text(json.dumps({"version": 2, "seed": 0, "cases": cases, "cases_sha256": cases_sha256(cases)}))
    return split


@pytest.fixture(scope="module")
def breast_with_reads(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads") / "BrEaST"
    return root, write_breast_with_reads(root)


def test_kappa_auc_and_their_bootstrap_interval():
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([1, 2], [True, True]))
    scores = np.linspace(0, 1, 40)
    labels = scores + np.random.default_rng(0).normal(0, 0.3, 40) > 0.5
    low, high = bootstrap_interval(roc_auc, [scores, labels], resamples=500)
    assert low < roc_auc(scores, labels) < high <= 1.0
    assert bootstrap_interval(roc_auc, [scores[:5], labels[:5]]) == (None, None)


def test_reads_map_to_descriptor_terms(breast_with_reads):
    reads = read_reads(breast_with_reads[0])
    assert reads["case001"] == {"shape": "irregular", "margin": "not circumscribed", "echo_pattern": "hypoechoic",
                                "posterior": "shadowing", "birads": "5"}
    assert reads["case002"]["margin"] == "circumscribed" and reads["case002"]["posterior"] == "enhancement"


def test_fit_then_check_agree_with_the_planted_reads(breast_with_reads, tiny_weights, tmp_path, capsys):
    root, split = breast_with_reads
    model = tmp_path / "likelihood.json"
    assert cli.main(["descriptors-fit", "--data", str(root), "--split", str(split), "--model", str(model),
                     "--no-progress"]) == 0
    fitted = json.loads(model.read_text())
    assert "train splits of BrEaST (12 lesion images" in fitted["notes"]["fitted_on"]
    assert "shape:" in capsys.readouterr().out

    output = tmp_path / "truth"
    assert cli.main(["descriptors", "--data", str(root), "--split", str(split), "--subset", "test",
                     "--likelihood", str(model), "--output", str(output), "--resamples", "200",
                     "--no-progress"]) == 0
    report = json.loads((output / "report.json").read_text())
    assert {row["id"] for row in report["cases"]} == {f"case{n:03d}" for n in range(19, 27)}
    kappa = report["agreement_kappa"]
    assert kappa["shape"]["value"] == pytest.approx(1.0) and kappa["margin"]["value"] == pytest.approx(1.0)
    assert kappa["posterior"]["value"] == pytest.approx(1.0)
    assert report["malignancy_auc"]["BrEaST: malignancy likelihood"]["value"] == pytest.approx(1.0)
    assert report["malignancy_auc"]["BrEaST: radiologists' BI-RADS category"]["value"] == pytest.approx(1.0)
    assert all(stats["low"] is None for stats in kappa.values())  # 8 test images: too few for an interval
    markdown = (output / "report.md").read_text()
    assert "not for diagnosis" in markdown and "kappa, shape" in markdown and "orientation" in markdown

    model_output = tmp_path / "model"
    assert cli.main(["descriptors", "--data", str(root), "--split", str(split), "--subset", "test",
                     "--masks", "model", "--weights", str(tiny_weights), "--device", "cpu",
                     "--likelihood", str(model), "--output", str(model_output), "--resamples", "50",
                     "--no-progress"]) == 0
    model_report = json.loads((model_output / "report.json").read_text())
    assert model_report["masks"] == "model" and model_report["weights"]["path"] == str(tiny_weights)
    assert len(model_report["cases"]) == 8
    for row in model_report["cases"]:
        assert (row["likelihood"] == 0.0) if not row["found"] else ("terms" in row)


def test_check_names_a_missing_reads_table(breast_with_reads, tmp_path, capsys):
    root, split = breast_with_reads
    copy = tmp_path / "BrEaST"
    copy.mkdir()
    for folder in ("images", "masks"):
        (copy / folder).symlink_to(root / folder)
    (copy / "cases.csv").write_text("Image_filename,Classification,Pixel_size\ncase001.png,malignant,0.01\n")
    assert cli.main(["descriptors", "--data", str(copy), "--split", str(split), "--subset", "test",
                     "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "needs the columns" in capsys.readouterr().err
