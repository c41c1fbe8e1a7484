"""Progress of long work while it runs: a round's clients, the server's evaluation, the offline
tools' jobs and settings.

:class:`Progress` shows one status at a time; a status is a callable rendered when shown, so
the elapsed times in it are current. On a terminal it is one transient live line (rich ``Live``,
re-rendered 4 times a second, erased when the work ends, so only the permanent lines stay).
Elsewhere (logs, CI, sweeps) it prints plain lines: a ``force``d status at once, any other only
after ``every_s`` seconds without a line (counted from when the work began), re-printed by a
background ticker at most once per ``every_s``, so a long step is never silent and short work
prints none. ``quiet`` shows nothing.

:class:`Steps` reports the settings of one offline job (re-evaluation) through a ``Progress``:
the setting running, and a line when each finishes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text

Status = Callable[[], str]
Clock = Callable[[], float]
EVERY_S = 15.0  # plain mode: at most one unforced line per this many seconds


class Progress:
    """One status line of work in progress (module docstring); :meth:`close` ends it."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False, every_s: float = EVERY_S,
                 clock: Clock = time.monotonic, ticker: bool = True) -> None:
        self.console = console or Console(highlight=False)
        self.quiet = quiet
        self.every_s = every_s
        self.clock = clock
        self.live_mode = self.console.is_terminal and not self.console.is_dumb_terminal
        self._ticker_wanted = ticker
        self._status: Status | None = None
        self._quiet_since = 0.0  # plain mode: when the last line was printed or the work began
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Whether a status is shown (between the first :meth:`update` and :meth:`close`)."""
        return self._status is not None

    def update(self, status: Status | str, force: bool = False) -> None:
        """Show ``status`` (a string or a callable giving one) instead of the current one.
        Plain mode prints it now when ``force``, else when nothing was printed for ``every_s``."""
        if self.quiet:
            return
        render = status if callable(status) else (lambda text=status: text)
        with self._lock:
            if self._status is None:
                self._quiet_since = self.clock()
            self._status = render
        if self.live_mode:
            if self._live is None:
                self._live = Live(console=self.console, transient=True, refresh_per_second=4,
                                  get_renderable=self._renderable)
                self._live.start()
            self._live.refresh()  # at once, not at the next tick
            return
        self.tick(force)
        if self._ticker_wanted and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick_until_closed, name="fedquant-progress", daemon=True)
            self._ticker.start()

    def tick(self, force: bool = False) -> bool:
        """Plain mode: print the current status if ``force`` or nothing was printed for
        ``every_s`` seconds; returns whether a line was printed."""
        with self._lock:
            if self._status is None or self.live_mode:
                return False
            now = self.clock()
            if not force and now - self._quiet_since < self.every_s:
                return False
            self._quiet_since = now
            text = self._status()
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)
        return True

    def close(self) -> None:
        """End the status: the live line is erased; plain mode prints nothing more."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            self._stop.set()
            if ticker is not threading.current_thread():
                ticker.join()
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        with self._lock:
            self._status = None

    def _renderable(self) -> Text:
        status = self._status
        return Text(status() if status is not None else "", no_wrap=True, overflow="ellipsis")

    def _tick_until_closed(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s / 4)):
            self.tick()


def seconds(s: float) -> str:
    """A duration as shown in progress lines: ``8.2 s``, ``41 s``, ``7 min 36 s``."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 600:
        return f"{s:.0f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"


class Steps:
    """The settings of one offline job as they run, through ``progress``: the setting running
    (``<title>: evaluating <setting> (i/m settings), <its elapsed>; job <elapsed>``), and when one
    ends a forced line ``<title>: <setting> i/m settings, <job's elapsed>`` (with ``lines``;
    without, the running status only). Call it as the evaluator's ``on_setting`` hook
    (``steps(setting, i, m)`` before setting i of m), and :meth:`done` when the job's
    evaluation returns; :meth:`stage` gives a hook that names a part of the job."""

    def __init__(self, progress: Progress, title: str, clock: Clock = time.monotonic) -> None:
        self.progress = progress
        self.title = title
        self.clock = clock
        self.started = clock()
        self._running: tuple[str, int, int, bool] | None = None  # setting, i, m, lines

    def __call__(self, setting: str, i: int, m: int) -> None:
        self._step(setting, i, m, True)

    def stage(self, label: str, lines: bool = True) -> Callable[[str, int, int], None]:
        """An ``on_setting`` hook for a part of the job (e.g. ``round 9``, ``calibration draw
        3/20``); its settings are named ``<label> <setting>``; ``lines=False``: no per-setting
        lines (many small steps)."""
        return lambda setting, i, m: self._step(f"{label} {setting}", i, m, lines)

    def update(self, what: str) -> None:
        """Show ``what`` the job is doing between settings (e.g. loading its data)."""
        self.done()
        self.progress.update(lambda: f"{self.title}: {what}, {seconds(self.clock() - self.started)}")

    def done(self) -> None:
        """The setting running has ended (its line, with ``lines``)."""
        running, self._running = self._running, None
        if running is not None and running[3]:
            setting, i, m, _ = running
            self.progress.update(f"{self.title}: {setting} {i}/{m} settings, "
                                 f"{seconds(self.clock() - self.started)}", force=True)

    def _step(self, setting: str, i: int, m: int, lines: bool) -> None:
        self.done()
        self._running = (setting, i, m, lines)
        begun = self.clock()
        self.progress.update(lambda: f"{self.title}: evaluating {setting} ({i}/{m} settings), "
                                     f"{seconds(self.clock() - begun)}; job {seconds(self.clock() - self.started)}")
