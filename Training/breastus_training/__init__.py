"""Training, evaluation and export of the SlicerBreastUS model on breast ultrasound datasets (BUSI, BrEaST)."""
