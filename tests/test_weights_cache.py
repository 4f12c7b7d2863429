"""Weights download and cache against a local server playing the hub and the bucket:
download, cache hit, resumed transfer, checksum mismatch, offline warm and cold."""

import hashlib
import json
import os

import numpy as np
import pytest

from jaxvision import weights_cache
from jaxvision.models import pretrained_source
from tests import weights_server
from tests.weights_server import WeightsServer

server = weights_server.served_weights  # the shared fixture, under the name used here

REPO = "org/tiny-model"


def _blob(n: int = 200_000, seed: int = 0) -> bytes:
    return np.random.RandomState(seed).bytes(n)


def _gets(srv: WeightsServer, path: str) -> list[str]:
    return [r for m, p, r in srv.requests if m == "GET" and p == path]


def test_hub_file_downloads_then_comes_from_the_cache(server):
    data = _blob()
    path = server.add_hub_file(REPO, "model.safetensors", data)
    got = weights_cache.fetch_hub(REPO, "model.safetensors")
    assert got.path.read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert str(got.path).startswith(str(weights_cache.cache_dir() / "hub"))
    again = weights_cache.fetch_hub(REPO, "model.safetensors")
    assert again.path == got.path and len(_gets(server, path)) == 1  # the hit downloads nothing


def test_interrupted_hub_transfer_resumes_with_a_range_request(server):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    # huggingface_hub keeps what it received in whole chunks, so cut after the first one.
    data = _blob(DOWNLOAD_CHUNK_SIZE + 2_000_000)
    path = server.add_hub_file(REPO, "model.safetensors", data)
    server.cut_once[path] = DOWNLOAD_CHUNK_SIZE + 1_000_000
    got = weights_cache.fetch_hub(REPO, "model.safetensors")
    assert got.path.read_bytes() == data
    assert _gets(server, path) == ["", f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


def test_hub_file_whose_bytes_do_not_match_the_lfs_sha256_is_removed(server):
    path = server.add_hub_file(REPO, "model.safetensors", _blob())
    server.advertise[path] = "ab" * 32
    with pytest.raises(weights_cache.WeightsFileError, match=r"model\.safetensors.*removed"):
        weights_cache.fetch_hub(REPO, "model.safetensors")
    blobs = list((weights_cache.cache_dir() / "hub").rglob("blobs/*"))
    assert blobs == [] and not list((weights_cache.cache_dir() / "hub").rglob("snapshots/*/*"))


def test_bucket_file_downloads_resumes_and_records_its_checksum(server):
    data = _blob(300_000, seed=1)
    path = server.add_bucket_file("vit_models/augreg/tiny.npz", data)
    server.cut_once[path] = 0
    got = weights_cache.fetch_url("gs://vit_models/augreg/tiny.npz")
    assert got.path.read_bytes() == data
    assert _gets(server, path) == ["", f"bytes={len(data) // 2}-"]
    record = json.loads(got.path.with_name("tiny.npz.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert weights_cache.fetch_url("gs://vit_models/augreg/tiny.npz").path == got.path
    assert len(_gets(server, path)) == 2  # the cache hit downloads nothing


def test_cached_bucket_file_that_changed_on_disk_is_rejected_and_removed(server):
    server.add_bucket_file("vit_models/tiny.npz", _blob())
    got = weights_cache.fetch_url("gs://vit_models/tiny.npz")
    with open(got.path, "r+b") as f:
        f.write(b"\0" * 16)
    with pytest.raises(weights_cache.WeightsFileError, match=r"tiny\.npz.*SHA-256"):
        weights_cache.fetch_url("gs://vit_models/tiny.npz")
    assert not got.path.exists()


def test_catalog_checksum_mismatch_rejects_the_download(server):
    server.add_bucket_file("vit_models/tiny.npz", _blob())
    with pytest.raises(weights_cache.WeightsFileError, match="failed verification"):
        weights_cache.fetch_url("gs://vit_models/tiny.npz", sha256="0" * 64)
    assert not list(weights_cache.cache_dir().rglob("tiny.npz*"))


def test_offline_mode_reads_a_warm_cache_without_the_network(server, monkeypatch):
    server.add_hub_file(REPO, "model.safetensors", _blob())
    server.add_bucket_file("vit_models/tiny.npz", _blob(seed=2))
    hub = weights_cache.fetch_hub(REPO, "model.safetensors")
    url = weights_cache.fetch_url("gs://vit_models/tiny.npz")
    server.close()
    before = len(server.requests)
    monkeypatch.setenv("JAXVISION_OFFLINE", "1")
    assert weights_cache.fetch_hub(REPO, "model.safetensors").path == hub.path
    assert weights_cache.fetch_url("gs://vit_models/tiny.npz").path == url.path
    assert len(server.requests) == before


def test_offline_mode_with_a_cold_cache_says_which_file_and_where_to_put_it(server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights_cache.NotCachedError) as hub_error:
        weights_cache.fetch_hub(REPO, "model.safetensors")
    assert "model.safetensors" in str(hub_error.value) and REPO in str(hub_error.value)
    assert f"{server.url}/{REPO}/resolve/main/model.safetensors" in str(hub_error.value)
    with pytest.raises(weights_cache.NotCachedError) as url_error:
        weights_cache.fetch_url("gs://vit_models/augreg/tiny.npz")
    target = weights_cache.url_cache_path("gs://vit_models/augreg/tiny.npz")
    assert str(target) in str(url_error.value)
    assert server.requests == []
    # A file put there by hand is then used (and its checksum recorded).
    target.parent.mkdir(parents=True)
    target.write_bytes(b"by hand")
    assert weights_cache.fetch_url("gs://vit_models/augreg/tiny.npz").path == target


def test_resolve_reads_hub_names_urls_and_files(server, tmp_path):
    server.add_hub_file(REPO, "weights.npz", b"hub")
    server.add_bucket_file("bucket/w.npz", b"url")
    hub = pretrained_source.resolve(f"hf-hub:{REPO}/weights.npz")
    assert hub.path.read_bytes() == b"hub" and hub.source == f"hf-hub:{REPO}/weights.npz@main"
    url = pretrained_source.resolve(f"{server.url}/bucket/w.npz")
    assert url.path.read_bytes() == b"url" and url.sha256 == hashlib.sha256(b"url").hexdigest()
    local = tmp_path / "mine.npz"
    local.write_bytes(b"file")
    assert pretrained_source.resolve(str(local)).sha256 == hashlib.sha256(b"file").hexdigest()
    with pytest.raises(ValueError, match=r"python -m jaxvision\.models --pretrained"):
        pretrained_source.resolve("augreg_in99k")
    assert os.environ["JAXVISION_CACHE"] in str(hub.path)
