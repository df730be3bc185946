"""Duplicate signatures, duplicate groups, and the group-aware split that keeps them whole."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.planted import GROUPS, planted_folder
from tltk.config import DataConfig, RunConfig
from tltk.data import load
from tltk.data.core import stratified_indices
from tltk.data.duplicates import conflicting_copies, duplicate_groups, signatures
from tltk.data.folder import scanned_files


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_folder(tmp_path_factory.mktemp("planted") / "photos")


def relative(root: Path, paths) -> list[str]:
    return [str(Path(p).relative_to(root)) for p in paths]


def test_groups_are_exactly_the_planted_duplicates(planted):
    files = scanned_files(planted)
    groups = duplicate_groups(signatures(planted, files))
    names = relative(planted, [f.path for f in files])
    found = [sorted(np.asarray(names)[groups == g].tolist())
             for g in np.unique(groups) if np.sum(groups == g) > 1]
    assert sorted(found) == sorted(sorted(members) for members in GROUPS.values())


def test_conflicting_copies_are_the_byte_copy_under_another_class(planted):
    files = scanned_files(planted)
    labels = np.asarray([["blue", "green", "red"].index(Path(f.path).parent.name)
                         for f in files])
    conflicts = conflicting_copies(signatures(planted, files), labels)
    assert [sorted(relative(planted, [files[i].path for i in c])) for c in conflicts] == \
        [sorted(GROUPS["other class"])]


@pytest.mark.parametrize("seed", range(6))
def test_grouped_split_keeps_every_planted_group_whole(planted, seed):
    dataset = load(DataConfig(dataset="folder", path=str(planted), val_fraction=0.3,
                              test_fraction=0.3), seed=seed)
    split_of = {name: split for split, s in dataset.splits.items()
                for name in relative(planted, _originals(planted, s.paths))}
    for members in GROUPS.values():
        assert len({split_of[m] for m in members}) == 1, (members, split_of)
    assert sum(len(s) for s in dataset.splits.values()) == len(split_of) == 40


def _originals(root: Path, decode_paths):
    by_decode = {f.decode_path: f.path for f in scanned_files(root)}
    return [by_decode[p] for p in decode_paths]


def test_without_groups_the_split_is_the_one_drawn_before():
    labels = np.repeat([0, 1, 2], [7, 12, 9])
    for seed in range(5):
        plain = stratified_indices(labels, {"val": .15, "test": .15}, seed)
        singletons = stratified_indices(labels, {"val": .15, "test": .15}, seed,
                                        groups=np.arange(len(labels)))
        assert all(np.array_equal(plain[k], singletons[k]) for k in plain)
        rng = np.random.default_rng(seed)
        expected = {}
        for cls in np.unique(labels):  # the pre-grouping algorithm, written out
            idx = rng.permutation(np.flatnonzero(labels == cls))
            n_val, n_test = (int(round(.15 * len(idx))),) * 2
            for name, part in (("val", idx[:n_val]), ("test", idx[n_val:n_val + n_test]),
                               ("train", idx[n_val + n_test:])):
                expected.setdefault(name, []).extend(part)
        assert all(np.array_equal(plain[k], np.sort(expected[k])) for k in plain)


def test_grouped_split_fills_each_share_with_whole_groups():
    labels = np.repeat([0, 1], 10)
    groups = np.arange(20)
    groups[[1, 2, 3]] = 1  # one group of three in class 0
    parts = stratified_indices(labels, {"val": .2, "test": .2}, seed=0, groups=groups)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(20))
    holder = [name for name, idx in parts.items() if 1 in idx]
    assert all(i in parts[holder[0]] for i in (1, 2, 3))
    assert [len(parts[k]) for k in ("val", "test")] >= [4, 4]


def test_old_configs_keep_their_ungrouped_split_new_ones_group():
    old = RunConfig.from_yaml("recipe: folder\ndata:\n  dataset: folder\n  path: p\n")
    assert old.data.group_duplicates is False
    assert RunConfig().data.group_duplicates is True
    assert RunConfig.from_yaml(RunConfig().to_yaml()).data.group_duplicates is True
    assert "group_duplicates: true" in RunConfig().to_yaml()


def test_loading_warns_in_one_line_about_conflicts_and_leaks(planted, caplog):
    with caplog.at_level(logging.WARNING, logger="tltk"):
        load(DataConfig(dataset="folder", path=str(planted), val_fraction=0.3,
                        test_fraction=0.3, group_duplicates=False), seed=0)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "1 byte-identical image(s) filed under two classes (blue/red)" in lines[0]
    assert f"see `tltk audit {planted}`" in lines[0]
