"""`tltk audit` on a folder with planted problems: each is reported, nothing else is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.planted import GROUPS, MISLABELLED, THUMBS, planted_folder
from tltk.cli import main
from tltk.models import backbones


@pytest.fixture
def thumbs():
    backbones.BACKBONES.register("thumbs", THUMBS)
    yield THUMBS
    backbones.BACKBONES.unregister("thumbs")


def run_audit(data: Path, out: Path, *extra: str):
    result = CliRunner().invoke(main, ["audit", str(data), "--backbone", "thumbs", "--weights",
                                       "none", "--out", str(out), "--set",
                                       "data.val_fraction=0.3", "--set",
                                       "data.test_fraction=0.3", *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "audit.csv"), result.output


def files_of(table: pd.DataFrame, kind: str, root: Path) -> list[list[str]]:
    return sorted(sorted(str(Path(f).relative_to(root)) for f in row.split(" | "))
                  for row in table[table.kind == kind].files)


@pytest.mark.slow
def test_audit_reports_each_planted_problem_and_nothing_else(tmp_path, thumbs):
    data = planted_folder(tmp_path / "photos")
    table, output = run_audit(data, tmp_path / "audit")
    assert files_of(table, "exact_duplicate", data) == sorted(
        sorted(GROUPS[k]) for k in ("byte copy", "other class"))
    assert files_of(table, "near_duplicate", data) == [sorted(GROUPS["resized copy"])]
    assert files_of(table, "conflicting_labels", data) == [sorted(GROUPS["other class"])]
    assert files_of(table, "label_error", data) == [[MISLABELLED]]
    suspect = table[table.kind == "label_error"].iloc[0]
    assert suspect.classes == "green" and "looks like red" in suspect.detail
    # The grouped split (the default) keeps every group whole: nothing leaks.
    assert set(table.kind) == {"exact_duplicate", "near_duplicate", "conflicting_labels",
                               "label_error"}
    assert "leak                   0" in output and "audited 40 images" in output
    page = (tmp_path / "audit" / "audit.html").read_text()
    assert page.count("<img src=\"data:image/jpeg;base64,") == 2 + 2 + 2 + 2 + 1
    assert "g1_small.png" in page and "mislabelled.png" in page


@pytest.mark.slow
def test_audit_of_an_ungrouped_split_finds_the_groups_it_splits(tmp_path, thumbs):
    data = planted_folder(tmp_path / "photos")
    table, _ = run_audit(data, tmp_path / "audit", "--set", "data.group_duplicates=false")
    leaks = table[table.kind == "leak"]
    assert len(leaks) >= 1  # seed 0 splits at least one planted pair
    for row in leaks.itertuples():
        assert len(set(row.splits.split(" | "))) > 1
        assert sorted(str(Path(f).relative_to(data)) for f in row.files.split(" | ")) in [
            sorted(g) for g in GROUPS.values()]


def test_audit_of_an_unknown_source_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["audit", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "DATA: " in result.output and "neither a folder nor a dataset name" in result.output


def test_audit_with_an_untrained_backbone_is_one_line(tmp_path):
    data = planted_folder(tmp_path / "photos")
    result = CliRunner().invoke(main, ["audit", str(data), "--backbone", "scratch",
                                       "--out", str(tmp_path / "audit")])
    assert result.exit_code == 2, result.output
    assert "--backbone: scratch is untrained" in result.output
    assert not (tmp_path / "audit").exists()
