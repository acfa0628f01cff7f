"""Readers and writers: WebDataset shards, Parquet, image folders, manifests, DataComp subsets."""
