"""The driver's bounded waits (``app/dataflow/runtime.py``): a stage that yields nothing, or a blocking call that does not
return, fails with a TimeoutError naming it instead of hanging the run."""

import threading
import time

import pytest

from prefloop.app.dataflow.runtime import iterate_with_timeout, wait_for


def test_wait_for_returns_the_result_or_reraises_the_error():
    assert wait_for(lambda: 42, 5, "quick") == 42

    def broken():
        raise ValueError("from the call")

    with pytest.raises(ValueError, match="from the call"):
        wait_for(broken, 5, "broken")


def test_wait_for_times_out_naming_what_it_waited_for():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"Ray Train run under /x \(train.timeout_s\): not finished after 0 s"):
        wait_for(release.wait, 0.3, "Ray Train run under /x (train.timeout_s)")
    assert 0.25 < time.monotonic() - started < 5
    release.set()  # the abandoned thread ends


def test_iterate_with_timeout_fails_a_stalled_stage():
    def stalls():
        yield 1
        time.sleep(5)
        yield 2

    rows = iterate_with_timeout(stalls(), 0.3, "rollout")
    assert next(rows) == 1
    with pytest.raises(TimeoutError, match="rollout"):
        next(rows)
