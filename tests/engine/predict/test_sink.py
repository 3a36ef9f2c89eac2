"""The writer thread: what it is given is written in order, and it is one of the threads forks wait for."""

import caswit_geo.engine.predict.sink as sink_module
from caswit_geo.engine.predict.sink import SinkThread


class _Recorder:
    """A unit writer that keeps what it is given."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.closed = self.aborted = False

    def put(self, pos: int, result) -> None:
        self.written.append(pos)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def test_the_writer_thread_writes_in_order_and_forks_wait_for_it(monkeypatch):
    """It writes with GDAL: a fork right after its join() must wait until it is gone (geo/forks.py)."""
    tracked = []
    monkeypatch.setattr(sink_module, "track", lambda t: tracked.append(t.name))
    writer = _Recorder()
    thread = SinkThread(writer)
    thread.start()
    thread.submit([(0, None), (1, None)])
    thread.submit([(2, None)])
    thread.finish()
    assert writer.written == [0, 1, 2] and writer.closed and not writer.aborted
    assert tracked == ["caswit-writer"]
