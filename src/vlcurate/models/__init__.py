"""Models: the CLIP-style scorer registry and loaders (open_clip), and the bundled tiny model."""
