"""Transforms: the registry of named preprocess steps, intensity, geometry, stain, patches,
augmentation."""
