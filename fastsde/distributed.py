"""Sampling, evaluation and likelihood split across processes and machines with torch.distributed, with the bits of
one process.

FSN1 noise is a function of (seed, sample id, draw id, element), so a sample's noise does not depend on which process
draws it. What can depend on the batch is the rest: a model's forward (oneDNN and cuDNN choose algorithms by shape)
and score_sde's Langevin corrector (its step size uses batch means of norms). So the work is cut into fixed
micro-batches of `batch` consecutive sample ids, micro-batch k = ids [k batch, min((k + 1) batch, n)), and
micro-batch k goes to rank k mod world_size. The same `batch` therefore gives the same micro-batches, and the same
bits, at any world size and on any number of machines.

`sample` writes one shard per micro-batch (`OUT.shards/shard-K.npz`, the sample ids inside, written to a temporary
file and renamed into place), so a run killed at any point and started again with the same arguments skips the
finished shards; rank 0 merges them in sample-id order into the final file and then removes the shards. The
arguments are stored in `OUT.shards/manifest.json` (callers put the sha256 of every input file that decides the
samples there too, `file_sha256`); a run with other arguments or changed inputs refuses to touch finished shards.
Rank 0 holds an exclusive lock on the `OUT.shards` directory (flock, released when the process ends, even on kill
-9) for the whole run: a second run into the same output fails at once with "in use by another run". A run that fails
before any shard is finished removes the shard directory it made; finished shards stay for the resume.
Ranks exchange only counts (one int64 all_reduce per round of micro-batches); the samples themselves travel through
the output directory, which must be on a filesystem every rank sees.

`for_each_batch` and `all_reduce` serve the statistics that are reduced as sums (the Fréchet distance from feature
sums and sums of outer products, bits/dim sums and sums of squares).

Process groups: `session` initializes torch.distributed's default group when torchrun started this process
(WORLD_SIZE > 1) with gloo for a CPU device and NCCL for a CUDA device. Without torchrun everything runs in this
process (world size 1) and no group is created.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["session", "rank", "world_size", "batches", "for_each_batch", "all_reduce", "collective_bytes", "sample",
           "SampleResult", "shard_directory", "write_npz_atomic", "MANIFEST", "FORMAT", "file_sha256",
           "current_umask"]

MANIFEST = "manifest.json"
FORMAT = "fastsde.distributed/1"
_TEMP_PREFIX = ".tmp-"
_collective_bytes = 0  # payload bytes this process has passed to all_reduce (see collective_bytes)


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextlib.contextmanager
def session(device="cpu"):
    """Join torchrun's process group for the duration of the block; yields the device this rank should use.

    Under torchrun with WORLD_SIZE > 1 the default group is created (gloo for a CPU `device`, NCCL for CUDA; a CUDA
    device without an index becomes cuda:LOCAL_RANK) and destroyed on exit. An already initialized group is used as
    it is, and without torchrun nothing happens (world size 1).
    """
    device = torch.device(device)
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    try:
        yield str(device)
    finally:
        if created:
            dist.destroy_process_group()


def batches(n: int, batch: int, rank_: int | None = None,
            world_size_: int | None = None) -> list[tuple[int, torch.Tensor]]:
    """The micro-batches of `rank_` (default: this rank) out of `world_size_`: [(k, sample ids (B,) int64)] with
    micro-batch k = ids [k batch, min((k + 1) batch, n)) dealt round-robin, k = rank_, rank_ + world_size_, ..."""
    _check_counts(n, batch)
    r = rank() if rank_ is None else int(rank_)
    p = world_size() if world_size_ is None else int(world_size_)
    if not 0 <= r < p:
        raise ValueError(f"rank must be in [0, world_size={p}), got {r}")
    return [(k, torch.arange(k * batch, min((k + 1) * batch, n), dtype=torch.int64))
            for k in range(r, math.ceil(n / batch), p)]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The elementwise sum (op="sum") or maximum (op="max") of `tensor` over all ranks, on every rank (a new tensor on
    tensor's device; the tensor itself when there is one process). NCCL reduces on this rank's CUDA device."""
    global _collective_bytes
    if op not in ("sum", "max"):
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    if world_size() == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    work = tensor.detach().to(device, copy=True).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    _collective_bytes += work.numel() * work.element_size()
    return work.to(tensor.device)


def collective_bytes() -> int:
    """Payload bytes this process has sent through `all_reduce` since it started (0 with one process)."""
    return _collective_bytes


def for_each_batch(fn: Callable[[int, torch.Tensor], object], n: int, *, batch: int, progress: bool = False,
                   desc: str = "samples") -> list:
    """Call fn(k, sample_ids) for this rank's micro-batches (`batches`); returns their results in order.

    Every rank runs the same number of rounds, each ended by one all_reduce of the samples finished in the round, so
    rank 0 can show a progress bar with the global count (tqdm, when installed and `progress`).
    """
    mine = batches(n, batch)
    rounds = math.ceil(math.ceil(n / batch) / world_size())
    bar = _progress_bar(n, desc) if progress and rank() == 0 else None
    results = []
    try:
        for i in range(rounds):
            done = 0
            if i < len(mine):
                k, ids = mine[i]
                results.append(fn(k, ids))
                done = len(ids)
            finished = int(all_reduce(torch.tensor([done], dtype=torch.int64)))
            if bar is not None:
                bar.update(finished)
    finally:
        if bar is not None:
            bar.close()
    return results


@dataclass
class SampleResult:
    """What `sample` did. arrays: the merged arrays in sample-id order on rank 0 (None on the other ranks);
    sampled / resumed: samples drawn in this run / found in finished shards (all ranks); sample_s: seconds until every
    shard was on disk; merge_s: rank 0's seconds to read the shards, write the final file and remove the shards;
    collective_bytes: all_reduce payload bytes this rank sent; shard_bytes: bytes of the shard files (rank 0)."""

    arrays: dict | None
    sampled: int
    resumed: int
    sample_s: float
    merge_s: float
    collective_bytes: int
    shard_bytes: int


def shard_directory(out: str) -> str:
    """Where `sample` keeps the shards and the manifest of the final file `out`: OUT's stem + '.shards'."""
    return os.path.splitext(out)[0] + ".shards"


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a file's bytes (for a manifest: a resumed run must read the same inputs)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez(path, **arrays) through a temporary file in the same directory and os.replace, so `path` is either
    absent, the old file, or complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; follow the umask as open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sample(sampler_factory: Callable[[torch.Tensor], Callable[[], object]], n: int, out: str, *, batch: int,
           seed: int | None, arguments: Mapping | None = None, progress: bool = True,
           write: Callable[[str, "SampleResult"], object] | None = None) -> SampleResult:
    """Draw samples 0 .. n-1 on every rank of the group, resumably, and merge them into `out` on rank 0.

    sampler_factory(sample_ids (B,) int64) -> a callable that returns the samples of those global ids: a tensor or
      array (B, ...) (stored as 'samples') or a mapping name -> (B, ...). fastsde's samplers give a sample the same
      noise whatever batch it is drawn in when built with `sample_ids=`. The factory is called once up front for
      micro-batch 0 so that bad settings fail before any file is written.
    batch: micro-batch size (module docstring); the same batch gives the same bits at any world size.
    seed, arguments: recorded with n and batch in OUT.shards/manifest.json. A restart with equal values resumes; other
      values over finished shards raise ValueError naming the differences (nothing is deleted).
    write(out, result): how rank 0 writes the final file, given the SampleResult so far (result.arrays: the merged
      arrays; default: write_npz_atomic(out, result.arrays)). The shards are removed after it returns, so a run
      killed before that finishes on restart.
    Call it on every rank. Returns a SampleResult (the merged arrays on rank 0).
    """
    _check_counts(n, batch)
    seed = None if seed is None else int(seed)
    arguments = _jsonable(dict(arguments or {}), "arguments")
    directory = shard_directory(out)
    manifest = {"format": FORMAT, "n": int(n), "batch": int(batch), "seed": seed, "arguments": arguments}
    sampler_factory(torch.arange(min(batch, n), dtype=torch.int64))
    bytes_before = collective_bytes()
    with _exclusive(directory) as made:
        try:
            return _sample_locked(sampler_factory, n, out, directory, manifest, batch, progress, write, bytes_before)
        except BaseException:
            if made and rank() == 0 and not _finished_shards(directory):
                shutil.rmtree(directory, ignore_errors=True)  # nothing to resume: leave nothing behind
            raise


def _sample_locked(sampler_factory, n, out, directory, manifest, batch, progress, write, bytes_before):
    _prepare(directory, manifest)
    start = time.perf_counter()
    counts = {"sampled": 0, "resumed": 0}

    def one(k, ids):
        path = _shard_path(directory, k)
        if _finished(path, ids):
            counts["resumed"] += len(ids)
            return
        arrays = _as_arrays(sampler_factory(ids)(), len(ids))
        write_npz_atomic(path, {"sample_ids": ids.numpy(), **arrays})
        counts["sampled"] += len(ids)

    for_each_batch(one, n, batch=batch, progress=progress)
    # Also the barrier before the merge: every shard is on disk once every rank has reached this reduction.
    sampled, resumed = (int(v) for v in all_reduce(torch.tensor([counts["sampled"], counts["resumed"]])))
    sample_s = time.perf_counter() - start
    if rank() != 0:
        return SampleResult(None, sampled, resumed, sample_s, 0.0, collective_bytes() - bytes_before, 0)
    start = time.perf_counter()
    merged, shard_bytes = _merge(directory, n, batch)
    result = SampleResult(merged, sampled, resumed, sample_s, time.perf_counter() - start,
                          collective_bytes() - bytes_before, shard_bytes)
    if write is None:
        write_npz_atomic(out, merged)
    else:
        write(out, result)
    _remove(directory)
    result.merge_s = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _exclusive(directory):
    """Rank 0 holds an exclusive flock on the shard directory itself for the block (other ranks: nothing); yields
    whether the directory was created here. A lock held by another live process is a ValueError naming the
    directory. Where the filesystem cannot flock a directory (EBADF/ENOLCK/EINVAL, e.g. some network filesystems),
    the run goes on unlocked, as before."""
    if rank() != 0:
        yield False
        return
    import errno
    import fcntl

    made = not os.path.isdir(directory)
    while True:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                fd = None
                break
            raise ValueError(f"{directory} is in use by another run into the same output (it holds the lock); wait "
                             f"for it to finish or write to another output") from None
        try:  # the previous holder may have removed the directory between our open and our lock: lock the new one
            same = os.stat(directory).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield made
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _check_counts(n, batch):
    for name, value in (("n", n), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n > 2**32:
        raise ValueError(f"n must be at most 2**32 (FSN1 sample ids are 32-bit), got {n}")


def _jsonable(value, name):
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serializable (it is stored in the manifest): {err}") from None


def _progress_bar(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample")


def _shard_path(directory, k):
    return os.path.join(directory, f"shard-{k:06d}.npz")


def _finished_shards(directory):
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if f.startswith("shard-") and f.endswith(".npz"))


def _differences(old, new, prefix=""):
    """'name: A there, B here' for every entry where two manifests differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new))
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [f"{prefix[:-1]}: {json.dumps(old)} there, {json.dumps(new)} here"]


def _read_manifest(directory):
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable fastsde manifest ({err}); delete {directory} to start over") \
            from None


def _prepare(directory, manifest):
    """Check an existing shard directory against `manifest` (every rank), create or reset it (rank 0), then make sure
    every rank sees the same manifest (the output must be on a shared filesystem)."""
    existing = _read_manifest(directory)
    finished = _finished_shards(directory)
    if existing is None and finished:
        raise ValueError(f"{directory} holds shards but no {MANIFEST}: not a resumable fastsde run; delete it to start "
                         f"over")
    if existing is not None and existing != manifest and finished:
        differences = _differences(existing, manifest)
        changed = [d.split(":")[0].rsplit(".", 1)[-1][:-len("_sha256")] for d in differences
                   if d.split(":")[0].endswith("_sha256") and ": null there" not in d]  # null: an older manifest
        if changed:
            raise ValueError(f"{directory} holds {len(finished)} finished shards drawn from other input files: the "
                             f"{', '.join(changed)} file{'s' if len(changed) > 1 else ''} changed since "
                             f"({'; '.join(differences)}); restore the original to resume, or delete {directory} to "
                             f"start over")
        raise ValueError(f"{directory} holds {len(finished)} finished shards of a run with other arguments ("
                         f"{'; '.join(_differences(existing, manifest))}); run again with those arguments to resume "
                         f"it, or delete {directory} to start over")
    if rank() == 0:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.startswith(_TEMP_PREFIX):  # left by a killed writer; nobody writes before the reduction below
                os.unlink(os.path.join(directory, name))
        if existing != manifest:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX, suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
            os.replace(tmp, os.path.join(directory, MANIFEST))
    all_reduce(torch.zeros(1, dtype=torch.int64))  # barrier: the manifest is written
    if _read_manifest(directory) != manifest:
        raise RuntimeError(f"rank {rank()} does not see the manifest rank 0 wrote in {directory}: with several "
                           f"machines the output must be on a filesystem all of them share")


def _finished(path, ids):
    """Whether `path` is a complete shard of exactly `ids` (a damaged or foreign one is drawn again)."""
    if not os.path.exists(path):
        return False
    try:
        with np.load(path) as data:
            return "sample_ids" in data.files and np.array_equal(data["sample_ids"], ids.numpy())
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def _as_arrays(result, b):
    if isinstance(result, Mapping):
        arrays = dict(result)
    elif isinstance(result, (torch.Tensor, np.ndarray)):
        arrays = {"samples": result}
    else:
        raise ValueError("the sampler must return a tensor, an array or a mapping of them, "
                         f"got {type(result).__name__}")
    if not arrays or "sample_ids" in arrays:
        raise ValueError(f"the sampler must return at least one array and none named 'sample_ids', got {list(arrays)}")
    out = {}
    for name, value in arrays.items():
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if value.ndim == 0 or value.shape[0] != b:
            raise ValueError(f"the sampler's {name!r} must have a leading dimension of {b} (the micro-batch), got "
                             f"shape {value.shape}")
        out[str(name)] = value
    return out


def _merge(directory, n, batch):
    """The shards' arrays concatenated in sample-id order (checking every shard's ids), and the shards' bytes."""
    parts, size = {}, 0
    for k in range(math.ceil(n / batch)):
        path = _shard_path(directory, k)
        size += os.path.getsize(path)
        with np.load(path) as data:
            expected = np.arange(k * batch, min((k + 1) * batch, n))
            if not np.array_equal(data["sample_ids"], expected):
                raise RuntimeError(f"{path} holds sample ids {data['sample_ids'][:4]}..., expected {expected[:4]}...")
            names = sorted(f for f in data.files if f != "sample_ids")
            if parts and names != sorted(parts):
                raise RuntimeError(f"{path} holds arrays {names}, the earlier shards {sorted(parts)}")
            for name in names:
                parts.setdefault(name, []).append(data[name])
    return {name: np.concatenate(values) for name, values in parts.items()}, size


def _remove(directory):
    """Remove the shards, then the manifest last (so a crash in between still leaves a resumable directory)."""
    for name in _finished_shards(directory):
        os.unlink(os.path.join(directory, name))
    os.unlink(os.path.join(directory, MANIFEST))
    shutil.rmtree(directory, ignore_errors=True)
