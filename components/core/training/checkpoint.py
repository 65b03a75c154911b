"""Trainer checkpoints: everything needed to continue training, sharded, resumable on another world size.

`<out>/checkpoints/step-N/` holds
- the tensors (model, EMA, optimizers: `tensors` in `save`) written with `torch.distributed.checkpoint`
  (DCP): each rank writes its own shard files, and a load reshards to whatever world size reads them;
- `trainer.pt` (rank 0): state that is the same on every rank (step, loader position, shared RNGs);
- `rank-R.pt` (each rank): what differs per rank (process RNG, a rank's pending batch);
- `checkpoint.json`, written last by rank 0: the world size and every file's size and sha256. A folder
  without it is unfinished; one whose files do not match it is damaged, and resuming falls back to
  the previous intact checkpoint (and says so).

Files are written locally first (a `.partial` folder beside the final one, renamed when complete; a
temp folder per rank for S3, uploaded before the index), so a crash never leaves a checkpoint that
looks complete. A local output folder must be one that every rank sees (one machine, or a shared file
system); jobs across machines without one write to S3. Only the newest `keep` checkpoints stay. Nothing downstream reads these folders: at
the end of a phase rank 0 exports an ordinary model folder.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from components.core import storage
from components.core.distributed import Context, barrier, broadcast_object, gather_objects
from components.core.training.ema import EMA

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
INDEX_FILE = "checkpoint.json"
SHARED_FILE = "trainer.pt"
FORMAT = 2
_INDEX = re.compile(r"/step-(\d+)/" + re.escape(INDEX_FILE) + "$")


class ModelState:
    """A (possibly DDP- or FSDP-wrapped) module as a DCP entry: keys without wrapper prefixes."""

    def __init__(self, module: nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.module)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.module, state)


class OptimizerState:
    """An optimizer as a DCP entry, keyed by parameter names (so it reshards like the model)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self.module, self.optimizer = module, optimizer

    def state_dict(self) -> dict[str, Any]:
        fresh = not self.optimizer.state
        state = get_optimizer_state_dict(self.module, self.optimizer)
        if fresh:
            # DCP creates the state of a fresh optimizer with one zero-gradient step at lr 0, which counts
            # as a step (Adam's bias correction would then be one step ahead). Zero moments and step 0
            # are exactly a fresh Adam's state.
            for param_state in self.optimizer.state.values():
                if "step" in param_state:
                    param_state["step"].zero_()
            state = get_optimizer_state_dict(self.module, self.optimizer)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.module, self.optimizer, state)


@dataclass
class Loaded:
    """What `load` restored besides the tensors (which it loads in place)."""

    uri: str
    step: int
    shared: dict[str, Any]
    ranks: dict[int, dict[str, Any]]  # this rank's own state, or every saved rank's when the world size changed
    saved_world_size: int


def checkpoint_uri(out: str | Path, step: int) -> str:
    return storage.join(out, CHECKPOINT_DIR, f"step-{step}")


def list_checkpoints(out: str | Path) -> list[tuple[int, str]]:
    """(step, uri) of every checkpoint that finished writing, oldest first (intact or not)."""
    found = []
    for uri in storage.list_files(storage.join(out, CHECKPOINT_DIR)):
        match = _INDEX.search(uri)
        if match:
            found.append((int(match.group(1)), uri[: -len(INDEX_FILE) - 1]))
    return sorted(found)


def damage(uri: str) -> str | None:
    """Why the checkpoint at `uri` cannot be used (a missing, truncated or changed file), or None."""
    try:
        index = storage.read_json(storage.join(uri, INDEX_FILE))
    except (OSError, ValueError, storage.StorageError) as exc:
        return f"{INDEX_FILE} unreadable ({exc})"
    if index.get("format") != FORMAT:
        return f"format {index.get('format')!r} is not {FORMAT}"
    for name, entry in index["files"].items():
        file_uri = storage.join(uri, name)
        if not storage.exists(file_uri):
            return f"{name} is missing"
        size, sha = _size_and_sha256(file_uri)
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, {entry['bytes']} written"
        if sha != entry["sha256"]:
            return f"{name} does not match its sha256"
    return None


def _size_and_sha256(uri: str) -> tuple[int, str]:
    local = storage.local_dir(uri)
    if local is not None:  # streamed: a model's optimizer state can be larger than memory allows twice
        return local.stat().st_size, storage.sha256_file(local)
    data = storage.read_bytes(uri)
    return len(data), storage.sha256_bytes(data)


def latest_intact(out: str | Path, ctx: Context) -> tuple[tuple[int, str] | None, list[tuple[str, str]]]:
    """The newest usable checkpoint (decided by rank 0, the same on every rank) and the damaged newer ones."""
    choice: tuple[tuple[int, str] | None, list[tuple[str, str]]] = (None, [])
    if ctx.is_main:
        damaged = []
        for step, uri in reversed(list_checkpoints(out)):
            reason = damage(uri)
            if reason is None:
                choice = ((step, uri), damaged)
                break
            log.warning("checkpoint %s is damaged (%s): falling back to the one before", uri, reason)
            damaged.append((uri, reason))
        else:
            choice = (None, damaged)
    return broadcast_object(choice, ctx)


# --------------------------------------------------------------------------- save


def save(out: str | Path, step: int, ctx: Context, tensors: dict[str, Any], shared: dict[str, Any],
         per_rank: dict[str, Any], keep: int) -> str:
    """Write checkpoint `step` from every rank (a collective), then keep only the newest `keep`."""
    final = checkpoint_uri(out, step)
    local_out = storage.local_dir(out)
    with _staging(final, local_out, ctx) as folder:
        with _quiet_single_process():
            dcp.save(tensors, checkpoint_id=folder, no_dist=not ctx.distributed)
        if ctx.is_main:
            torch.save(shared, folder / SHARED_FILE)
        torch.save(per_rank, folder / f"rank-{ctx.rank}.pt")
        barrier(ctx)  # every rank's files (and DCP's metadata) are written
        mine = _own_files(folder, ctx)
        if local_out is None:  # S3: every rank uploads what it wrote
            for name in mine:
                storage.put_file(folder / name, storage.join(final, name))
        entries = {k: v for files in gather_objects({n: _entry(folder / n) for n in mine}, ctx) for k, v in files.items()}
        barrier(ctx)  # every upload is done
        if ctx.is_main:
            index = {"format": FORMAT, "step": step, "world_size": ctx.world_size, "files": entries}
            storage.write_json(storage.join(final if local_out is None else str(folder), INDEX_FILE), index)
            if local_out is not None:
                shutil.rmtree(storage.local_dir(final), ignore_errors=True)  # a damaged one of the same step
                folder.rename(storage.local_dir(final))
            for _, old in list_checkpoints(out)[:-keep]:
                storage.delete_prefix(old)
        barrier(ctx)
    return final


@contextlib.contextmanager
def _staging(final: str, local_out: Path | None, ctx: Context) -> Iterator[Path]:
    if local_out is not None:  # beside the final folder, renamed into place when complete
        folder = Path(str(storage.local_dir(final)) + ".partial")
        if ctx.is_main:
            shutil.rmtree(folder, ignore_errors=True)  # left by a crash
            folder.mkdir(parents=True)
        barrier(ctx)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="t2v-checkpoint-") as tmp:  # S3: one local folder per rank
        yield Path(tmp)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every single-process call that it runs without a process group: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _own_files(folder: Path, ctx: Context) -> list[str]:
    """The files this rank wrote: its DCP shards and rank file; rank 0 also the metadata and shared file."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    own = [n for n in names if n.startswith(f"__{ctx.rank}_") or n == f"rank-{ctx.rank}.pt"]
    if ctx.is_main:
        own += [n for n in names if n in (".metadata", SHARED_FILE)]
    return own


def _entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": storage.sha256_file(path)}


# --------------------------------------------------------------------------- load


def load(uri: str, ctx: Context, tensors: dict[str, Any]) -> Loaded:
    """Load checkpoint `uri` into `tensors` in place (resharding if needed); returns the rest."""
    index = storage.read_json(storage.join(uri, INDEX_FILE))
    with _local_copy(uri, index) as folder:
        with _quiet_single_process():
            dcp.load(tensors, checkpoint_id=folder, no_dist=not ctx.distributed)
        shared = _torch_load(folder / SHARED_FILE)
        saved = int(index["world_size"])
        wanted = [ctx.rank] if saved == ctx.world_size else list(range(saved))
        ranks = {r: _torch_load(folder / f"rank-{r}.pt") for r in wanted}
    return Loaded(uri, int(index["step"]), shared, ranks, saved)


def read_shared(uri: str) -> dict[str, Any]:
    """The state shared by all ranks (step, run id, settings hash): what a trainer checks before loading."""
    with tempfile.TemporaryDirectory() as tmp:
        path = storage.get_file(storage.join(uri, SHARED_FILE), Path(tmp) / SHARED_FILE)
        return _torch_load(path)


def full_weights(module: nn.Module, ema: EMA | None = None) -> dict[str, torch.Tensor]:
    """The module's whole (unsharded) state dict on CPU on rank 0, with `ema`'s shadows in place of the
    parameters when given: what a model folder holds. A collective: every rank calls it."""
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ema is not None:
        for name, shadow in ema.shadow.items():
            full = shadow.full_tensor() if isinstance(shadow, DTensor) else shadow  # sharded under FSDP2
            if name in state:
                state[name] = full.detach().cpu().clone()
    return state


def read(uri: str) -> dict[str, Any]:
    """A whole checkpoint as one nested dict in this process (for tools and tests; no process group)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    index = storage.read_json(storage.join(uri, INDEX_FILE))
    with _local_copy(uri, index) as folder, tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "all.pt")
        state = torch.load(Path(tmp) / "all.pt", weights_only=True)
        state.update(_torch_load(folder / SHARED_FILE))
        state["ranks"] = [_torch_load(folder / f"rank-{r}.pt") for r in range(int(index["world_size"]))]
    return state


@contextlib.contextmanager
def _local_copy(uri: str, index: dict[str, Any]) -> Iterator[Path]:
    local = storage.local_dir(uri)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="t2v-checkpoint-") as tmp:
        for name, entry in index["files"].items():
            storage.get_file(storage.join(uri, name), Path(tmp) / name, entry["sha256"])
        yield Path(tmp)


def _torch_load(path: Path) -> dict[str, Any]:
    # weights_only: tensors and plain containers only, never arbitrary objects from a file.
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- resume or start


@dataclass
class ResumePoint:
    """Where a trainer starts: its newest intact checkpoint and that checkpoint's shared state, or nothing."""

    latest: tuple[int, str] | None
    shared: dict[str, Any] | None

    @property
    def mlflow_run_id(self) -> str | None:
        return self.shared["mlflow_run_id"] if self.shared else None


def resume_point(out: str | Path, ctx: Context, run_hash: str, events: Any) -> ResumePoint:
    """The newest intact checkpoint of `out` (damaged newer ones recorded in `events`); a ValueError when it
    holds a run of other settings (`run_hash`): resuming it would mix two configurations in one model."""
    latest, damaged = latest_intact(out, ctx)
    for uri, reason in damaged:
        events.add("damaged_checkpoint", checkpoint=uri, reason=reason)
    shared = read_shared(latest[1]) if latest else None
    if shared is not None and shared["run_hash"] != run_hash:
        raise ValueError(f"{out} holds checkpoints of another configuration or stage ({latest[1]}); "
                         f"use a fresh --out or delete them")
    return ResumePoint(latest, shared)


def start_or_resume(loop: Any, point: ResumePoint) -> None:
    """Restore `loop` (a trainer's loop: `restore`, `save`, `events`) from the resume point, or write its
    step-0 checkpoint: a rollback target even before the first interval."""
    if point.latest is not None:
        loop.restore(point.latest[1])
        loop.events.add("resume", from_checkpoint=point.latest[1])
    else:
        loop.save()
