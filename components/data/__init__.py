"""Data stage: synthesize or ingest captioned videos, filter them, shard survivors into bucketed
WebDataset tars, and stream them back for training (`components.data.loader`, the public read API
that the training components use)."""
