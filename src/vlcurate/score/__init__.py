"""The score job (`vlcurate score`): every image-caption pair of a pool scored by a CLIP-style model,
as Parquet score tables per shard, resumable, with decode workers overlapping the model."""
