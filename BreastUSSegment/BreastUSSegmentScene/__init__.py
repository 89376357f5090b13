"""The Slicer side of BreastUSSegment: reads frames from MRML nodes and writes the core's results into the scene.

Beside the core (``BreastUSSegmentLib``, which imports neither Slicer nor Qt), this package imports Slicer,
VTK and MRML but never Qt, so it runs headless with ``slicer-core``. Its layers, each importing only those
below it:

- ``common``: the names, tags and roles the module writes into the scene, its error types, translation;
- ``nodes``: scene helpers (node lists, geometry, the output segmentation, removal of a failed write's nodes);
- ``inputs`` and ``rois``: frames, pixel spacing and box prompts read from nodes;
- ``segments``, ``results`` and ``sequences``: the Lesion and box segments, the result volumes, overlay and
  measurement table, and the Sequence items of a clip;
- ``writer``: one core result into the scene, for a volume, a Sequence or box prompts.
"""
