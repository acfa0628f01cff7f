"""Per-sample statistics that curation operators compute: caption text (`text`) and image (`image`).

Pure functions over one sample or a batch, with no operator framework: the operators wrap them,
benchmarks time them, and tests check them on real COCO captions and photos.
"""
