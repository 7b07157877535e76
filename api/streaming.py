"""CSV and parquet trace exports as byte/text iterators for StreamingResponse.

Each export opens its own session: the request's session has committed and closed by the
time the response body is sent. Parquet needs a file to write to; a writer thread fills a
bounded queue that the response drains, so memory stays bounded by a few buffers and a
client that goes away stops the writer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

from sqlalchemy.orm import Session, sessionmaker

from store.traces import iter_trace_csv, write_trace_parquet

PIECE_BYTES = 1 << 16  # bytes per queued piece: pyarrow writes many tiny pieces
QUEUE_PIECES = 8


def csv_stream(sessions: sessionmaker[Session], run_id: int, metrics: Sequence[str] | None) -> Iterator[str]:
    with sessions() as session:
        yield from iter_trace_csv(session=session, run_id=run_id, metrics=metrics)


class ClientGone(BrokenPipeError):
    """The response stopped draining: the writer thread gives up."""


class QueueSink:
    """A write-only binary file whose bytes come out of `pieces()` on another thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_PIECES)
        self.abandoned = threading.Event()
        self.buffer = bytearray()
        self.position = 0
        self.closed = False

    # --- the file interface pyarrow uses ---
    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self.buffer += data
        self.position += size
        if len(self.buffer) >= PIECE_BYTES:
            self._put(bytes(self.buffer))
            self.buffer.clear()
        return size

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    # --- the producer's end ---
    def finish(self, error: BaseException | None) -> None:
        """Send what is buffered, then the end marker (or the writer's error)."""
        try:
            if error is None and self.buffer:
                self._put(bytes(self.buffer))
            self._put(error)
        except ClientGone:
            pass

    def _put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self.abandoned.is_set():
                raise ClientGone("the client stopped reading")
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- the consumer's end ---
    def pieces(self) -> Iterator[bytes]:
        try:
            while (item := self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.abandoned.set()


def parquet_stream(sessions: sessionmaker[Session], run_id: int, metrics: Sequence[str] | None) -> Iterator[bytes]:
    sink = QueueSink()

    def produce() -> None:
        error: BaseException | None = None
        try:
            with sessions() as session:
                write_trace_parquet(session=session, run_id=run_id, metrics=metrics, sink=sink)  # type: ignore[arg-type]
        except ClientGone:
            return
        except BaseException as exc:  # handed to the consumer, which raises it in the response task
            error = exc
        sink.finish(error)

    writer = threading.Thread(target=produce, name=f"parquet-run-{run_id}", daemon=True)
    writer.start()
    try:
        yield from sink.pieces()
    finally:
        writer.join()
