"""The round loop's Serve start in a thread (``app/rounds/loop.py``): off unless ``loop.serve``, and its error reaches the
loop where it waits (a round's publish), not lost in the thread."""

from concurrent.futures import Future

import pytest

from prefloop.app.rounds.loop import serve_latest_round, wait_serving


class _Loop:
    serve = False


class _Recipe:
    loop = _Loop()


def test_no_serve_start_without_loop_serve():
    assert serve_latest_round(_Recipe(), run=None) is None
    wait_serving(None)  # nothing to wait for


def test_the_serve_starts_error_is_raised_where_the_loop_waits():
    started = Future()
    started.set_exception(RuntimeError("starting Serve app 'prefloop': port 8000 taken"))
    with pytest.raises(RuntimeError, match="port 8000 taken"):
        wait_serving(started)


def test_not_serving_without_ray(monkeypatch):
    # `prefloop demo` on a run whose rounds were all committed before: the loop started neither Ray nor Serve,
    # so the demo must serve the final round itself instead of asking an app that is not there. The test
    # session may share a Ray cluster started by an earlier test, so "this driver has no Ray" is patched in.
    import ray

    from prefloop.app.serving.serve import is_serving

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert is_serving() is False
