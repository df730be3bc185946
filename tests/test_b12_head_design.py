"""B12's bookkeeping: how a head of E epochs is read from one longer fit, the few-shot
draws, the summary over seeds and the rule (the fits themselves run by hand:
`python -m benchmarks b12 --quick`, about 90 s).

Example:
    $ python -m pytest tests/test_b12_head_design.py
"""

import numpy as np

from benchmarks.b12_head_design import best_within, few_shot, rule, summarize


def curve(val, test, steps_per_epoch=10):
    return {"steps_per_epoch": steps_per_epoch, "val": val, "test": test}


def test_a_shorter_head_keeps_the_best_epoch_of_its_prefix():
    fit = curve([0.5, 0.7, 0.6, 0.9], [0.4, 0.65, 0.7, 0.8])
    assert best_within(fit, 10) == (0.5, 0.4)  # one epoch
    assert best_within(fit, 30) == (0.7, 0.65)  # the third epoch is worse on val
    assert best_within(fit, 400) == (0.9, 0.8)  # longer than the fit: all of it
    assert best_within(fit, 1) == (0.5, 0.4), "at least one epoch"


def test_few_shot_draws_per_class_and_per_seed():
    labels = np.repeat(np.arange(3), 40)
    picked = few_shot(labels, 25, seed=1)
    assert np.bincount(labels[picked]).tolist() == [25, 25, 25]
    assert np.array_equal(picked, few_shot(labels, 25, seed=1))
    assert not np.array_equal(picked, few_shot(labels, 25, seed=2))


def test_the_summary_averages_seeds_and_the_rule_prefers_the_shortest_close_head():
    runs = [{"regime": "full", "size": 160, "smoothing": 0.1, "seed": seed,
             **curve([0.70 + d, 0.748 + d, 0.75 + d], [0.7, 0.7, 0.7])} for seed, d in
            enumerate((0.0, 0.002, 0.004))]
    rows = summarize(runs, (10, 20, 30, 100))
    assert [r["steps"] for r in rows] == [10, 20, 30], "marks beyond the fit are left out"
    assert rows[2]["val"] == 0.752 and rows[2]["seeds"] == 3 and rows[2]["val_sd"] == 0.002
    chosen = rule(rows)["full"]
    assert chosen["best"]["steps"] == 30
    assert chosen["shortest_close"]["steps"] == 20, "within half a point of the best"
