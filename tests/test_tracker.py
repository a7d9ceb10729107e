"""Device fleets through TVM's RPC tracker: tracker://HOST:PORT/KEY addresses, the errors a user can meet, a
loopback tracker handing out devices by key (with its queue), and the benchmark suite spread over two emulator
RPC servers registered under one key."""
import json
import socket
import threading
import time

import pytest

from edgekit.errors import EdgekitError
from edgekit.runtimes import rpc

KEY = "android-arm64"  # the convention: devices register under their target's name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- addresses and errors (no tracker needed)

def test_tracker_url_is_parsed():
    assert rpc.parse_tracker_url("tracker://10.0.0.2:9190/android-arm64") == ("10.0.0.2", 9190, "android-arm64")
    assert rpc.check_device("tracker://fleet.local:9190/rpi5") == "tracker"
    assert rpc.check_device("rpc://127.0.0.1:9090") == "rpc"
    assert rpc.tracker_wait("tracker://h:9190/rpi5?wait=2.5") == 2.5
    assert rpc.tracker_wait("tracker://h:9190/rpi5") == rpc.TRACKER_WAIT_S


@pytest.mark.parametrize("url", ["tracker://host:9190", "tracker://host:9190/", "tracker://host/android-arm64",
                                 "tracker://host:notaport/k", "tracker://host:9190/a/b", "tracker://host:9190/k?x=1",
                                 "tracker://user@host:9190/k", "rpc://host:9190/android-arm64",
                                 "tracker://host:9190/key:with-colon", "tracker://host:70000/k",
                                 "tracker://host:9190/k?wait=soon", "rpc://host:9090?wait=3"])
def test_malformed_tracker_url_names_the_form(url):
    with pytest.raises(EdgekitError, match=r"tracker://HOST:PORT/KEY"):
        rpc.parse_tracker_url(url)


def test_unknown_scheme_names_both_forms():
    with pytest.raises(EdgekitError, match=r"rpc://HOST:PORT .*tracker://HOST:PORT/KEY"):
        rpc.check_device("ssh://board")


def test_unreachable_tracker_says_how_to_start_one():
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(EdgekitError, match=rf"cannot reach a TVM RPC tracker at 127.0.0.1:{port}.*"
                                           rf"edgekit device tracker --port {port}"):
        rpc.request(f"tracker://127.0.0.1:{port}/{KEY}", wait_s=30)
    assert time.monotonic() - t0 < 10  # refused at once, not after the wait


def test_something_else_at_the_address_is_not_taken_for_a_tracker():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        closer = threading.Thread(target=lambda: listener.accept()[0].close())
        closer.start()
        with pytest.raises(EdgekitError, match="not as a TVM RPC tracker"):
            rpc.devices(f"tracker://127.0.0.1:{port}/{KEY}")
        closer.join()


def test_suite_key_must_name_a_target():
    from edgekit.bench.suite import device_target

    assert device_target(f"tracker://127.0.0.1:9190/{KEY}") == KEY
    with pytest.raises(EdgekitError, match="names no target.*android-arm64"):
        device_target("tracker://127.0.0.1:9190/pixel7")


def test_cli_refuses_bad_device_addresses(cli, tmp_path):
    code, _, err = cli("bench", tmp_path / "missing", "--device", "tracker://host:9190")
    assert code == 2 and "tracker://HOST:PORT/KEY" in err and "Traceback" not in err
    code, _, err = cli("bench", "--suite", "all", "--device", "rpc://127.0.0.1:9090",
                       "--report-dir", tmp_path / "r")
    assert code == 2 and "tracker://HOST:PORT/KEY" in err and not (tmp_path / "r").exists()
    code, _, err = cli("device", "emulator", "rpc-server", "--tracker", "127.0.0.1:9190")
    assert code == 2 and "--tracker and --key go together" in err
    port = _free_port()
    code, _, err = cli("device", "serve", "--tracker", f"127.0.0.1:{port}", "--key", KEY, "--port", _free_port())
    assert code == 2 and f"cannot reach a TVM RPC tracker at 127.0.0.1:{port}" in err


# ---------------------------------------------------------------- a loopback tracker with a host RPC server

@pytest.fixture(scope="module")
def tracker():
    pytest.importorskip("tornado")
    with rpc.tracker("127.0.0.1", _free_port()) as address:
        yield address


def _wait_registered(url: str, count: int, timeout_s: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while len(found := rpc.devices(url)) < count:
        assert time.monotonic() < deadline, f"only {found} registered at {url}"
        time.sleep(0.2)
    return found


def test_tracker_hands_out_devices_by_key_and_queues(tracker):
    url = f"tracker://{tracker}/host-test"
    server = rpc.serve(tracker, "host-test", host="127.0.0.1", port=_free_port())
    try:
        (name,) = _wait_registered(url, 1)
        session, got = rpc.request(url, wait_s=10)
        assert got == name and session.cpu(0).exist
        t0 = time.monotonic()
        with pytest.raises(EdgekitError, match=r"all 1 device\(s\) with key 'host-test' .* stayed busy for 1 s"):
            rpc.request(url, wait_s=1)  # the only device is in use: queued, then given up
        assert 1 <= time.monotonic() - t0 < 5
        del session  # the server re-registers once the session ends
        _, again = rpc.request(url, wait_s=30)
        assert again == name
    finally:
        server.terminate()


def test_run_bench_and_auto_take_a_tracker_device(tracker, cli, tmp_path):
    import numpy as np
    import torch

    import edgekit
    from edgekit.compile.auto import _device_runner

    assert _device_runner(f"tracker://{tracker}/host-cli") is rpc.run_remote  # compile --backend auto --device
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8)
    art = edgekit.compile_model(module, (x,), target="host", backend="tvm", output=tmp_path / "art")
    np.save(tmp_path / "x.npy", x.numpy())
    url = f"tracker://{tracker}/host-cli"
    server = rpc.serve(tracker, "host-cli", host="127.0.0.1", port=_free_port())
    try:
        (name,) = _wait_registered(url, 1)
        code, out, err = cli("run", art, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npz", "--device", url)
        assert code == 0, err
        np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output0"], module(x).detach().numpy(), atol=1e-5)
        code, out, err = cli("bench", art, "--device", url, "--iters", "3", "--json")
        assert code == 0, err
        assert json.loads(out)["device"] == name
    finally:
        server.terminate()


def test_unknown_key_fails_within_its_wait(tracker, cli, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(EdgekitError, match=r"no device with key 'jetson-nano' registered .* within 2 s.*"
                                           r"edgekit device serve --tracker"):
        rpc.request(f"tracker://{tracker}/jetson-nano", wait_s=2)
    assert 2 <= time.monotonic() - t0 < 8
    t0 = time.monotonic()  # the same from the command line, the wait given in the address
    code, _, err = cli("bench", "--suite", "all", "--filter", "^tiny$", "--device",
                       f"tracker://{tracker}/rpi5?wait=1", "--report-dir", tmp_path / "r")
    assert code == 2 and "no device with key 'rpi5'" in err and "within 1 s" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the suite on two emulator devices

def _tiny_cases():
    torch = pytest.importorskip("torch")
    from edgekit.apps.spec import ModelCase

    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    return [ModelCase("tiny_linear", linear, (torch.randn(4, 64),)),
            ModelCase("tiny_conv", conv, (torch.randn(1, 3, 16, 16),)),
            ModelCase("tiny_mlp", mlp, (torch.randn(2, 16),))]


@pytest.mark.emulator
@pytest.mark.slow
def test_suite_runs_on_two_emulator_devices_at_once(emulator_sysroot, tracker, tmp_path):
    from edgekit.bench import suite
    from edgekit.runtimes import emulator

    url = f"tracker://{tracker}/{KEY}"
    ports = (_free_port(), _free_port())
    with emulator.rpc_server(ports[0], tracker=tracker, key=KEY), \
            emulator.rpc_server(ports[1], tracker=tracker, key=KEY):
        servers = set(_wait_registered(url, 2))
        assert servers == {f"127.0.0.1:{p}/{KEY}" for p in ports}
        report = suite.run(tmp_path / "report", iters=5, device=url, cases=_tiny_cases(), cache_dir=tmp_path / "c")
    rows = report["rows"]
    assert [r.get("error") for r in rows] == [None] * 3
    assert sorted(r["case"] for r in rows) == ["tiny_conv", "tiny_linear", "tiny_mlp"]
    assert all(r["impl"] == "tvm" and r["target"] == KEY and r["p50_ms"] > 0 for r in rows)
    assert {r["device"] for r in rows} == servers  # both devices served at least one row, each row names its own
    by_device = {d: [r for r in rows if r["device"] == d] for d in servers}
    assert any(a["started"] < b["ended"] and b["started"] < a["ended"]  # two rows ran at the same time
               for a in by_device[min(servers)] for b in by_device[max(servers)])
    saved = json.loads((tmp_path / "report/bench.json").read_text())
    assert saved["device"] == url and {r["device"] for r in saved["rows"]} == servers
    table = (tmp_path / "report/bench.md").read_text()
    assert all(f"| {r['case']} |" in table and f"{r['device']} |" in table for r in rows)
    assert f"Devices: {url}" in table
