"""Training, evaluation and export of the SlicerBreastUS model on BUSI."""
