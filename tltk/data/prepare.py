"""`tltk data prepare`: download and build the tfds datasets the tfds sources read.

`prepare("dogs", data_dir)` runs tfds' own build (`download_and_prepare`, with its
progress bars) of `stanford_dogs`, `imagenet_v2/matched-frequency` (`dogs-v2`) or
`tf_flowers` into `data_dir`. Offline, files already placed in the tfds manual folder
(`<data_dir>/downloads/manual`, under the names tfds lists) are used instead; when a
download fails, the one-line error names each file, its URL and that folder.

Example::

    prepare("flowers", "~/tensorflow_datasets")
    # PosixPath('/home/me/tensorflow_datasets/tf_flowers/3.0.1')
"""

from __future__ import annotations

import threading
from pathlib import Path

from tltk.data.tfds_sources import PREPARE, tfds_builder
from tltk.errors import TltkError
from tltk.registry import Registry

DATASETS = Registry("DATASET", dict(PREPARE))
# Seconds to wait for a download server before calling the machine offline.
NETWORK_TIMEOUT_S = 5


def default_data_dir() -> Path:
    """tfds' own default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    import tensorflow_datasets as tfds

    return Path(tfds.core.constants.DATA_DIR).expanduser()


def manual_dir(data_dir: Path) -> Path:
    return data_dir / "downloads" / "manual"


def prepare(dataset: str, data_dir: str | None = None) -> Path:
    """Build tfds dataset `dataset` (dogs | dogs-v2 | flowers) in `data_dir`; its folder."""
    import tensorflow_datasets as tfds

    name = DATASETS.get(dataset)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    builder = tfds_builder(name, str(root))
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir(root)))
    try:
        _check_network(builder, root)
        builder.download_and_prepare(download_config=config)
    except (OSError, tfds.download.DownloadError) as exc:
        raise _offline(dataset, builder, root, exc) from None
    return Path(builder.data_dir)


def _downloads(builder) -> dict:
    """URL -> tfds UrlInfo of the files this builder's config downloads."""
    urls = builder.url_infos or {}
    # A builder's checksums list the files of all its configs; keep this config's own.
    config = getattr(builder.builder_config, "name", None)
    return {u: info for u, info in urls.items() if config and config in u} or urls


def _check_network(builder, root: Path) -> None:
    """Fail in seconds when a file must be downloaded and its server cannot be reached.

    tfds retries a dead connection for minutes, printing urllib3's warnings; one plain
    request with a short timeout and no retries tells an offline machine at once.
    Proxies set in the environment are honoured, as tfds' own download does.
    """
    import requests

    if builder.is_prepared():
        return
    missing = [url for url, info in _downloads(builder).items()
               if not (manual_dir(root) / info.filename).exists()]
    if not missing:
        return
    answer = []

    def probe():
        try:
            requests.head(missing[0], timeout=NETWORK_TIMEOUT_S, allow_redirects=False)
            answer.append(True)
        except requests.exceptions.RequestException:
            answer.append(False)

    # A thread bounds the name lookup too, which requests' timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_TIMEOUT_S)
    if not (answer and answer[0]):
        host = requests.utils.urlparse(missing[0]).netloc
        raise OSError(f"cannot reach {host} within {NETWORK_TIMEOUT_S} s (offline?)")


def _offline(dataset: str, builder, root: Path, exc: Exception) -> TltkError:
    """The one-line error for a failed download: what to fetch, and where to put it."""
    urls = _downloads(builder)
    files = ", ".join(f"{info.filename} ({url})" for url, info in urls.items())
    # requests' messages nest the cause ("... (Caused by NameResolutionError(...))").
    text = str(exc).splitlines()[0].split(" (Caused by")[0] if str(exc) else ""
    reason = text[:160] or type(exc).__name__
    return TltkError(f"data prepare {dataset}: download failed ({reason}); download "
                     f"{files} on a machine with internet access, put them in "
                     f"{manual_dir(root)}, then rerun `tltk data prepare {dataset} "
                     f"--data-dir {root}`")
