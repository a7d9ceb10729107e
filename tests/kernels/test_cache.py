"""The kernels' one on-disk library cache (edgekit.kernels.cache), shared by attention and scan."""

import threading

from edgekit.kernels import cache


def test_disk_cache_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", str(tmp_path))
    calls = []

    def export(path):
        calls.append(path)
        path.write_bytes(b"lib")

    first = cache.library("demo.so", export)
    assert cache.library("demo.so", export) == first
    assert len(calls) == 1 and first.read_bytes() == b"lib" and first.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["demo.so"]  # no staging left


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_KERNEL_CACHE", str(tmp_path))
    calls, start = [], threading.Barrier(4)

    def export(path):
        calls.append(path)
        path.write_bytes(b"lib")

    def build():
        start.wait()
        results.append(cache.library("shared.so", export))

    results = []
    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and results[0].read_bytes() == b"lib"


def test_both_kernels_use_the_one_cache():
    from edgekit.kernels.attention import build as attention_build
    from edgekit.kernels.scan import build as scan_build

    for module in (attention_build, scan_build):
        assert module.library is cache.library
        assert not hasattr(module, "cache_dir")
