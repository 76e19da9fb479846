"""bench.core.progress.Count: k/N with an ETA, on one redrawn line, and nothing when progress is off."""

from __future__ import annotations

import io
import re

from bench.core.progress import Count


def test_count_draws_k_of_n_with_an_eta_and_clears_its_line() -> None:
    out = io.StringIO()
    count = Count("gradient variance: estimator", 3, progress=True, stream=out)
    assert count.line() == "gradient variance: estimator 0/3"  # no ETA before one item has a duration
    count.step()
    count.step()
    count.close()
    lines = out.getvalue().split("\r\033[K")
    assert re.fullmatch(r"gradient variance: estimator 1/3, \d+ s, ETA \d+ s", lines[1])
    assert re.fullmatch(r"gradient variance: estimator 2/3, \d+ s, ETA \d+ s", lines[2])
    assert lines[-1] == ""  # the line is cleared at the end


def test_count_is_silent_without_progress() -> None:
    out = io.StringIO()
    count = Count("x", 2, progress=False, stream=out)
    count.step()
    count.close()
    assert out.getvalue() == "" and count.done == 1


def test_the_eta_is_the_mean_time_per_item_times_the_items_left() -> None:
    import time

    count = Count("x", 5, progress=False)
    count.step(2)
    count.t0 = time.monotonic() - 10.0  # 2 items in 10 s: 5 s each, 3 left
    assert re.fullmatch(r"x 2/5, 10 s, ETA 15 s", count.line())
