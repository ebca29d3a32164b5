"""Map a chunk function over items on all cores (spawned processes) or on a Ray cluster.

Results come back in input order whatever the scheduling, so outputs are
deterministic. A progress bar (tqdm, on stderr) counts items. On any error or
Ctrl-C the worker processes are terminated (or the Ray tasks cancelled) before
the exception propagates.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
ChunkFn = Callable[[list], list]  # list of items -> list of results, one per item


def available_cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def chunked(items: Sequence[T], n_workers: int, max_chunk: int = 64) -> list[list[T]]:
    """About 16 chunks per worker (smooth progress, balanced tails), each <= max_chunk items."""
    size = max(1, min(max_chunk, math.ceil(len(items) / (16 * max(1, n_workers)))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def map_chunks(
    chunk_fn: ChunkFn,
    items: Sequence[T],
    workers: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> list:
    """`chunk_fn` over `items` in chunks; in-process when workers == 1, else a spawn pool.

    `chunk_fn` must be picklable (a module-level function or a functools.partial of one).
    """
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    chunks = chunked(items, workers)
    results: list[list | None] = [None] * len(chunks)
    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress, leave=False) as bar:
        if workers == 1 or len(chunks) <= 1:
            for i, chunk in enumerate(chunks):
                results[i] = chunk_fn(chunk)
                bar.update(len(chunk))
        else:
            context = multiprocessing.get_context("spawn")  # safe beside threads (Ray, torch)
            pool = context.Pool(min(workers, len(chunks)), initializer=_ignore_sigint)
            try:
                jobs = [(chunk_fn, i, chunk) for i, chunk in enumerate(chunks)]
                for i, out in pool.imap_unordered(_run_chunk, jobs):
                    results[i] = out
                    bar.update(len(out))
                pool.close()
            finally:
                pool.terminate()  # no-op after close() drained; kills workers on error/Ctrl-C
                pool.join()
    return [r for chunk_results in results for r in chunk_results]


def map_chunks_ray(
    chunk_fn: ChunkFn,
    items: Sequence[T],
    address: str,
    ship: Callable[[T], object] | None = None,
    progress: bool = True,
    desc: str = "",
) -> list:
    """`chunk_fn` over `items` as Ray tasks on the cluster at `address` ("auto", "ray://...").

    Uses the Ray already initialised in this process if there is one. `ship(item)`
    runs on the driver just before a chunk is submitted (e.g. to read a file's
    bytes, so workers need no shared filesystem); at most two chunks per cluster
    CPU are in flight, which bounds driver memory.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False)
    try:
        n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        chunks = chunked(items, n_cpus)
        task = ray.remote(num_cpus=1)(_run_chunk)
        results: list[list | None] = [None] * len(chunks)
        pending: dict = {}
        next_chunk = 0
        with tqdm(total=len(items), desc=desc, unit="file", disable=not progress, leave=False) as bar:
            try:
                while next_chunk < len(chunks) or pending:
                    while next_chunk < len(chunks) and len(pending) < 2 * n_cpus:
                        payload = [ship(item) for item in chunks[next_chunk]] if ship else chunks[next_chunk]
                        pending[task.remote((chunk_fn, next_chunk, payload))] = next_chunk
                        next_chunk += 1
                    done, _ = ray.wait(list(pending), num_returns=1)
                    i, out = ray.get(done[0])
                    del pending[done[0]]
                    results[i] = out
                    bar.update(len(out))
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
    finally:
        if started_here:
            ray.shutdown()
    return [r for chunk_results in results for r in chunk_results]


def _run_chunk(job: tuple[ChunkFn, int, list]) -> tuple[int, list]:
    chunk_fn, index, chunk = job
    return index, chunk_fn(chunk)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
