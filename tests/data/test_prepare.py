"""`tltk data prepare`: tfds builds, and the one-line error when the download fails."""

from __future__ import annotations

import pytest
import requests
from click.testing import CliRunner
from tensorflow_datasets.core.download import downloader

from tltk.cli import main


@pytest.fixture
def offline(monkeypatch):
    """Every tfds download fails as it does without a network."""
    def no_network(url, **kwargs):
        raise requests.exceptions.ConnectionError(
            f"HTTPConnectionPool: Max retries exceeded with url: {url} "
            "(Failed to establish a new connection: Name or service not known)")

    monkeypatch.setattr(downloader, "_open_url", no_network)


@pytest.mark.parametrize("dataset,files", [
    ("flowers", ["flower_photos.tgz"]),
    ("dogs", ["images.tar", "lists.tar", "annotation.tar"]),
    ("dogs-v2", ["imagenetv2-matched-frequency.tar.gz"])])
def test_prepare_offline_names_what_to_download_and_where(tmp_path, offline, dataset, files):
    result = CliRunner().invoke(main, ["data", "prepare", dataset, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    (line,) = [text for text in result.output.splitlines() if text.startswith("error:")]
    assert "download failed" in line and "Max retries exceeded" in line
    assert all(name in line for name in files) and "threshold0.7" not in line
    assert str(tmp_path / "downloads" / "manual") in line
    assert f"tltk data prepare {dataset} --data-dir {tmp_path}" in line


def test_prepare_knows_only_the_tfds_datasets():
    result = CliRunner().invoke(main, ["data", "prepare", "imagenet"])
    assert result.exit_code == 2 and "dogs-v2" in result.output
