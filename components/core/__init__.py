"""Shared services every component uses: config, storage, tracking, runtime, checkpoints, manifests.

`core` imports no component; components import `core` and nothing of each other.
"""
