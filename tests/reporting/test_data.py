"""Which K a run's test_nll was estimated with, as the report reads it."""

from __future__ import annotations

import pandas as pd

from bench.reporting.data import latest_setting


def test_the_k_of_the_latest_nll_comes_from_the_largest_steps_last_tag_entry() -> None:
    raw = pd.DataFrame({
        "params.nll_samples": ["100", "100", "5", None],
        # run 0: trained with K = 100, evaluated again with K = 1000 at the same step
        # run 1: K = 100 at step 5, K = 1000 at step 10 (resumed to more epochs)
        # run 2: no tag (a store from before the tags): the param stands; run 3: no NLL at all
        "tags.bench.nll_samples.step5": ["100,1000", "100", None, None],
        "tags.bench.nll_samples.step10": [None, "1000", None, None],
        "tags.bench.nll_samples.stepX": ["7", "7", "7", None],  # not a step: ignored
    })
    got = latest_setting(raw, "nll_samples", raw["params.nll_samples"])
    assert got.tolist()[:3] == ["1000", "1000", "5"] and pd.isna(got.iloc[3])
