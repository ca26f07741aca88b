"""Reading sources: DICOM series, NIfTI and 2D files, slides, MedMNIST files."""
