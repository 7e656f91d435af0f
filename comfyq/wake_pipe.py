"""A self-pipe: the one way to end a thread's wait on sockets (a LISTEN connection, select) from another thread or
a signal handler at once, instead of when the wait's timeout runs out. Whoever waits passes `read_fd` with its
sockets; `wake()` writes a byte, `drain()` empties the pipe again."""

from __future__ import annotations

import os
import select


class WakePipe:
    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def wake(self) -> None:
        try:
            os.write(self._write_fd, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the waiter is already due to wake

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds` or until woken."""
        select.select([self.read_fd], [], [], max(0.0, seconds))
        self.drain()

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Only once no thread waits on `read_fd` any more."""
        if not self._closed:
            self._closed = True
            os.close(self.read_fd)
            os.close(self._write_fd)
