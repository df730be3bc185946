"""`tltk data prepare`: tfds builds, and the one-line error when the download fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner
from tensorflow_datasets.core.download import downloader

from tltk.cli import main

# A proxy nobody listens on: every request fails at once, as on a machine without a network.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


@pytest.fixture
def offline(monkeypatch):
    """Every tfds download fails as it does without a network."""
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
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
    assert "download failed (cannot reach" in line and "(offline?)" in line
    assert all(name in line for name in files) and "threshold0.7" not in line
    assert str(tmp_path / "downloads" / "manual") in line
    assert f"tltk data prepare {dataset} --data-dir {tmp_path}" in line


def test_prepare_knows_only_the_tfds_datasets():
    result = CliRunner().invoke(main, ["data", "prepare", "imagenet"])
    assert result.exit_code == 2 and "dogs-v2" in result.output


@pytest.mark.slow
def test_prepare_offline_fails_within_seconds_without_retry_warnings(tmp_path):
    """A real `tltk data prepare dogs` without a network: the one line, at once.

    tfds alone retried for 3.5 minutes, printing urllib3's warnings. The goal is 15 s;
    nearly all of it is importing TensorFlow and tfds (12.6 s of the 17.8 s measured at
    a load of 8.5 on two cores), so the bound leaves room for a loaded machine.
    """
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from tltk.cli import main; main()", "data",
                           "prepare", "dogs", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **NO_NETWORK})
    seconds = time.monotonic() - started
    assert done.returncode == 2 and seconds < 45, (seconds, done.stderr)
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: data prepare dogs: download failed (cannot reach")
    assert "images.tar" in line and str(tmp_path / "downloads" / "manual") in line
