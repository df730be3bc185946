"""Doctests of tltk/ (collected by `--doctest-modules`) run in a fresh temporary folder.

So an example that writes files leaves nothing in the checkout, and the feature and
Keras caches stay out of $HOME, as they do for tests/ (tests/conftest.py).
"""

from __future__ import annotations

import gc

import pytest
from _pytest.doctest import DoctestItem


def pytest_collection_finish(session):
    """Freeze what collection imported (TensorFlow, Keras, tltk, the test modules).

    Every later garbage collection, such as the one `keras.backend.clear_session()` runs
    after each test module, then skips those objects: about a second a pass on 2 cores
    becomes milliseconds. Objects created by the tests are collected as usual.
    """
    gc.freeze()


# The longest test modules (half a minute to a minute and a half each on two cores, with
# the other worker busy). They are collected first, so that under
# `--dist worksteal` (pyproject.toml) the other worker fills the time beside them with
# short tests, rather than one of them running alone at the end of the suite.
LONG_FIRST = ("tests/test_notebooks.py", "tests/test_b9_quick.py", "tests/test_realdata.py")


def pytest_collection_modifyitems(session, config, items):
    """Move the LONG_FIRST modules to the front; every other test keeps its order."""
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONG_FIRST)))


@pytest.fixture(autouse=True)
def _doctest_in_tmp_path(request, tmp_path, monkeypatch):
    if isinstance(request.node, DoctestItem):
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("TLTK_CACHE", str(tmp_path / "tltk-cache"))
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    yield
