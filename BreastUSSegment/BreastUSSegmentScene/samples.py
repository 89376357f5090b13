"""The bundled sample frames, offered in Slicer's Sample Data module."""

import hashlib
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Samples"
SAMPLE_NAMES = ("breastus_sample_benign", "breastus_sample_malignant")


def sampleDataSources(samplesDir=SAMPLES_DIR):
    """``(name, image path, sha256)`` of every bundled sample frame present in ``samplesDir``."""
    sources = []
    for name in SAMPLE_NAMES:
        path = Path(samplesDir) / f"{name}.png"
        if path.is_file():
            sources.append((name, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return sources


def registerSampleData():
    """Add the bundled sample frames to the Sample Data module (local files, no download)."""
    import SampleData

    category = "Breast ultrasound"
    for name, path, digest in sampleDataSources():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=category,
            sampleName=name,
            thumbnailFileName=str(path),
            uris=path.as_uri(),
            fileNames=path.name,
            checksums=f"SHA256:{digest}",
            nodeNames=name,
        )
