"""Seeded epoch streams: epoch e's batches depend only on (seed, e), so a resumed
stream is the tail of an uninterrupted one."""

from __future__ import annotations

from tltk.engine import streams


def test_epoch_streams_depend_only_on_seed_and_epoch():
    import tensorflow as tf

    examples = tf.data.Dataset.range(10).map(lambda i: (i, i % 2))
    whole = streams.epoch_stream(examples, 10, 4, seed=0, first=0, epochs=3, buffer=10)
    tail = streams.epoch_stream(examples, 10, 4, seed=0, first=2, epochs=3, buffer=10)
    batches = [x.numpy().tolist() for x, _ in whole]
    assert len(batches) == 9 and sorted(sum(batches[:3], [])) == list(range(10))
    assert batches[:3] != batches[3:6], "every epoch has its own order"
    assert [x.numpy().tolist() for x, _ in tail] == batches[6:]
