"""The Slicer side of BreastUSSegment: everything of the module but its Module, Widget, Logic and Test classes.

Beside the core (``BreastUSSegmentLib``, which imports neither Slicer nor Qt), this package imports Slicer,
VTK and MRML but never Qt itself, so it runs headless with ``slicer-core``. Its layers, each importing only
those below it:

- ``common``: the names, tags and roles the module writes into the scene, its error types, translation;
- ``nodes``, ``parameters``, ``models``, ``status``, ``progress``, ``samples``, ``dependencies``: scene helpers
  (node lists, geometry, the output segmentation, removal of a failed write's nodes); the panel's parameter node
  and the options it gives the Logic; model cards and loaded segmenters; the status lines; run progress by stage;
  the bundled sample frames; the Python packages the module needs and their installed versions (``install``
  asks the user and installs them);
- ``inputs``, ``rois``, ``segments``, ``results``, ``measurements``, ``provenance``: frames and spacing read from
  volumes; box prompts; the Lesion and box segments; the result volumes and overlay; the measurement table (a row
  per lesion per frame); the provenance attributes of the output segmentation;
- ``sequences``: Sequence items of a clip; ``review``: measuring the Lesion segment again, the descriptors of the
  frame shown and the labelmap export; ``writer``: one core result into the scene, for a volume, a
  Sequence or box prompts, without the bookkeeping around it (the Logic's);
- ``outputs``: what the Logic's entry points return;
- ``standins``: the scripted-module base classes where Slicer's are absent (plain Python);
- ``live``: a live image's newest frame segmented each time it changes, written in place.
"""
