"""Client replies counted as the server pulls them, for a progress display of the round running.

Flower's strategy loop asks ``grid.send_and_receive`` for a round's replies and gets them all at
once. :class:`CountingGrid` wraps the grid the strategy is started with and does the same thing
through the Grid's public API, ``push_messages`` then ``pull_messages`` until every message is
answered (or ``timeout``), sleeping between looks as the wrapped grid does; after the push and
after every look that brings replies it calls ``on_replies(done, sent)``. The replies, their
order and the timeout are those of Flower's own loop, so results do not depend on it. A grid
without ``push_messages``/``pull_messages`` (a test's in-process grid) is asked with its own
``send_and_receive`` and reports 0 before and the number of replies after; no messages, no
replies (nothing is asked). Everything else is the wrapped grid's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message

RepliesSink = Callable[[int, int], None]  # on_replies(done, sent)
HTTP_PULL_S = 3.0  # seconds between looks where the grid states none (Flower's HttpGrid sleeps 3 s)


class CountingGrid:
    """``grid`` whose ``send_and_receive`` reports the replies pulled so far (module docstring)."""

    def __init__(self, grid, on_replies: RepliesSink) -> None:
        self.grid = grid
        self.on_replies = on_replies

    def __getattr__(self, name: str):
        if name == "grid":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:  # e.g. the evaluation round of a strategy that evaluates on the server
            return []
        if not (hasattr(self.grid, "push_messages") and hasattr(self.grid, "pull_messages")):
            self.on_replies(0, len(messages))
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            self.on_replies(len(replies), len(messages))
            return replies
        waiting = set(self.grid.push_messages(messages))
        del messages  # as Flower's loop: the sent models are not held while the round trains
        sent = len(waiting)
        self.on_replies(0, sent)
        pause = float(getattr(self.grid, "pull_interval", HTTP_PULL_S))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            pulled = list(self.grid.pull_messages(waiting))
            if pulled:
                replies.extend(pulled)
                waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
                self.on_replies(sent - len(waiting), sent)
            if not waiting:
                break
            time.sleep(pause)
        return replies
