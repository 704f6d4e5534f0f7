"""Concurrent requests gathered into batches, decoded on one thread of their own.

Requests hand in rows (a prompt each, with its own settings) and return to the
event loop; the decoding thread takes the oldest row's batch key and every
waiting row of that key, up to `max_batch`, and decodes them together. Rows of
another key wait for another batch: a row only ever shares a batch whose shapes
it would have alone, so batching never changes an answer.

Up to `max_batches` batches run at once, a token of each in turn, so a
request that arrives while a batch runs starts at that batch's next step
instead of after its last.
"""

import logging
import threading
import time

from tfclm.serve.protocol import APIError

logger = logging.getLogger(__name__)


class Batcher:
    """Decodes the rows that `submit` hands in, in batches of up to `max_batch`; `counts` says how it went."""

    def __init__(self, decoder, max_batch=32, max_queue=256, max_batches=1, gather_seconds=0.005):
        self.decoder = decoder
        self.max_batch, self.max_queue, self.gather_seconds = max_batch, max_queue, gather_seconds
        self.max_batches = max_batches
        self.counts = {"batches": 0, "rows": 0, "largest_batch": 0, "batches_of_more_than_one": 0}
        self.decoding = 0  # rows in the batches in hand
        self._in_hand = {}
        self._pending = []  # (key, row, fail), oldest first
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="tfclm-decoder", daemon=True)

    def start(self) -> "Batcher":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, entries: list) -> None:
        """Queue `entries`, each (key, row, fail): `fail(exc)` is told if its batch cannot be decoded."""
        with self._ready:
            if self._closing:
                raise APIError(503, "the server is shutting down; retry on another one", code="shutting_down")
            if len(entries) > self.max_queue:
                raise APIError(
                    503,
                    f"this request's {len(entries)} rows (prompts x n) exceed the server's queue of "
                    f"{self.max_queue}; send fewer, or start the server with a larger --max-queue",
                    code="queue_full",
                )
            if len(self._pending) + len(entries) > self.max_queue:
                raise APIError(
                    503,
                    f"the server's queue is full ({len(self._pending)} of {self.max_queue} rows waiting); retry "
                    "shortly, or start it with a larger --max-queue",
                    code="queue_full",
                )
            self._pending.extend(entries)
            self._ready.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, fail the rows still waiting, and stop the thread."""
        with self._ready:
            self._closing = True
            waiting, self._pending = self._pending, []
            self._ready.notify()
        for _, _, fail in waiting:
            fail(APIError(503, "the server shut down before this request's turn", code="shutting_down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        """Start batches while rows wait (up to `max_batches`), and step every batch in hand in turn."""
        running = []  # (generator, rows)
        while True:
            while len(running) < self.max_batches:
                batch = self._next_batch(wait=not running)
                if batch is None:
                    break
                running.append(self._batch(*batch))
            if not running:
                return  # closing, and nothing left in hand
            for batch in list(running):
                if next(batch, None) is None:
                    running.remove(batch)
            self.decoding = sum(len(rows) for rows in self._in_hand.values())

    def _batch(self, key, entries):
        """One batch as a generator: a step a `next`, the batch's failure handed to its rows, its size counted."""
        rows = [row for _, row, _ in entries]
        self._in_hand[id(entries)] = rows
        try:
            for _ in self.decoder.steps(key, rows):
                yield True
        except Exception as exc:  # a batch that fails fails its requests, never the server
            logger.exception("serve: a batch of %d rows failed", len(entries))
            for _, _, fail in entries:
                fail(exc)
        finally:
            del self._in_hand[id(entries)]
            self._count(len(entries))

    def _next_batch(self, wait: bool):
        """(key, entries) of the oldest row's key, or None when none waits (or the server closes); with `wait`,
        blocks for the first row, then gives others a moment to join it."""
        with self._ready:
            while wait and not self._pending and not self._closing:
                self._ready.wait()
            if self._closing or not self._pending:
                return None
        if wait and self.gather_seconds and len(self._pending) < self.max_batch:
            time.sleep(self.gather_seconds)
        with self._ready:
            live = [entry for entry in self._pending if not entry[1].done]  # rows whose client left wait no more
            if not live:
                self._pending = []
                return None
            key = live[0][0]
            taken = [entry for entry in live if entry[0] == key][: self.max_batch]
            chosen = {id(entry) for entry in taken}
            self._pending = [entry for entry in live if id(entry) not in chosen]
            return key, taken

    def _count(self, rows: int) -> None:
        counts = self.counts
        counts["batches"] += 1
        counts["rows"] += rows
        counts["largest_batch"] = max(counts["largest_batch"], rows)
        counts["batches_of_more_than_one"] += rows > 1
