"""The core's models on the Slicer side: a weights file's model card and its loaded segmenters, with the errors
the panel shows. Reading a card needs no PyTorch; a segmenter runs on whichever runtime its backend names."""

from pathlib import Path

from BreastUSSegmentLib import BUNDLED_WEIGHTS

from .common import BreastUSSegmentError, _


def modelCard(weightsPath=None):
    """The core's ``ModelCard`` of a weights file (the bundled model by default)."""
    path = Path(weightsPath) if weightsPath else Path(BUNDLED_WEIGHTS)
    try:
        from BreastUSSegmentLib.modelcard import WeightsError, read_model_card
    except ImportError as error:
        raise BreastUSSegmentError(
            _("A Python package the model needs is missing ({error}).").format(error=error)) from error
    try:
        return read_model_card(path)
    except WeightsError as error:
        raise BreastUSSegmentError(_("Cannot read the model card of {path}: {error}").format(
            path=path, error=error)) from error


class Segmenters:
    """The core's ``LesionSegmenter`` of each weights file, device, backend and precision, loaded once (again when
    the file changes)."""

    def __init__(self) -> None:
        self._loaded = {}

    def get(self, weightsPath=None, device: str = "auto", backend: str = "auto", precision: str = "auto"):
        """The segmenter of these weights (the bundled model by default) on ``device``, run by ``backend`` in
        ``precision`` (the core's names; ``auto``: see ``BreastUSSegmentLib.runtime.choose_backend``)."""
        path = Path(weightsPath) if weightsPath else Path(BUNDLED_WEIGHTS)
        if not path.is_file():
            if path == Path(BUNDLED_WEIGHTS):
                raise BreastUSSegmentError(
                    _("The trained model is not installed: {path} is missing. Reinstall the extension or choose a "
                      "model file (.safetensors) under Advanced.").format(path=path)
                )
            raise BreastUSSegmentError(_("Model weights not found: {path}").format(path=path))
        key = (str(path.resolve()), path.stat().st_mtime_ns, str(device), str(backend), str(precision))
        if key not in self._loaded:
            try:
                from BreastUSSegmentLib.inference import LesionSegmenter
                from BreastUSSegmentLib.modelcard import WeightsError
            except ImportError as error:
                raise BreastUSSegmentError(
                    _("A Python package the model needs is missing ({error}). Click Segment lesion to install "
                      "it, then restart Slicer.").format(error=error)
                ) from error
            try:
                self._loaded[key] = LesionSegmenter.from_weights(path, device=device, backend=backend,
                                                                 precision=precision)
            except (WeightsError, RuntimeError, ValueError) as error:
                raise BreastUSSegmentError(_("Cannot load the model {path}: {error}").format(path=path, error=error)) from error
        return self._loaded[key]
