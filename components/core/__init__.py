"""Shared services every component uses: config, storage, tracking, runtime and distributed processes,
model folders, manifests and the stage preamble, metrics and media, and the training kit (`training/`).

`core` imports no component; components import `core` and nothing of each other.
"""
