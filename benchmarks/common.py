"""Shared pieces of the benchmarks: configs composed like the CLI, process-tree memory sampling."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil

from fedquant.hydra_conf import compose_config
from fedquant.runtime.allocator import retain_freed_memory


def make_config(*overrides: str) -> dict:
    return compose_config(overrides)


def allocator_option(parser) -> None:
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator settings (simulation.retain_freed_memory=false)")


def apply_allocator_option(args) -> str:
    """Set up the allocator as fedquant's processes do (unless --default-malloc); describe it."""
    if args.default_malloc:
        return "allocator: glibc defaults"
    return "allocator: freed memory retained" if retain_freed_memory() else "allocator: defaults (not glibc)"


def training_bound(clients: list[dict], workers: int) -> float:
    """Least time ``workers`` workers need for a round's local training: the clients' summed
    ``seconds`` shared out, or the slowest client alone (clients are not split)."""
    seconds = [c["seconds"] for c in clients]
    return max(sum(seconds) / workers, max(seconds))


class TreeMemorySampler:
    """Peak of the summed RSS of a process and all its descendants (Ray's raylet and workers)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a process may exit meanwhile
                        total += p.memory_info().rss
            except psutil.Error:
                break
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
