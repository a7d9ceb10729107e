"""`edgekit device ...`: the aarch64 emulator and real-device runners. Wired in by edgekit/cli.py."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from edgekit.errors import EdgekitError


def register(subparsers) -> None:
    device = subparsers.add_parser("device", help="aarch64 emulator and real-device runners (TVM RPC, adb)")
    dsub = device.add_subparsers(dest="device_command", required=True)

    emu = dsub.add_parser("emulator", help="the QEMU arm64 sysroot that runs aarch64 artifacts on this host")
    esub = emu.add_subparsers(dest="emulator_command", required=True)
    setup = esub.add_parser("setup", help="build it (debootstrap + aarch64 runtime wheels; minutes, root)")
    setup.add_argument("--force", action="store_true", help="rebuild from scratch")
    setup.set_defaults(func=_setup)
    esub.add_parser("status", help="where it is, whether it is built for this edgekit's runtime versions") \
        .set_defaults(func=_status)
    server = esub.add_parser("rpc-server", help="serve TVM RPC from inside the emulator on 127.0.0.1 "
                                                "(stand-in for a board; stop with Ctrl-C)")
    server.add_argument("--port", type=int, default=9090, help="TCP port on 127.0.0.1 to serve on")
    _registration(server, required=False)
    server.set_defaults(func=_rpc_server)

    serve = dsub.add_parser("serve", help="serve TVM RPC on this machine (a board), registered with a TVM RPC "
                                          "tracker; clients reach it as tracker://HOST:PORT/KEY (stop with Ctrl-C)")
    _registration(serve, required=True)
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (the tracker hands out the address "
                                                         "it sees this machine connect from)")
    serve.add_argument("--port", type=int, default=9090, help="TCP port to serve on")
    serve.set_defaults(func=_serve)

    tracker = dsub.add_parser("tracker", help="run TVM's RPC tracker: the queue that hands devices to "
                                              "--device tracker://HOST:PORT/KEY (stop with Ctrl-C)")
    tracker.add_argument("--host", default="0.0.0.0", help="address to listen on")
    tracker.add_argument("--port", type=int, default=9190, help="TCP port to listen on")
    tracker.set_defaults(func=_tracker)


def _registration(parser, required: bool) -> None:
    parser.add_argument("--tracker", metavar="HOST:PORT", required=required,
                        help="register with this TVM RPC tracker (`edgekit device tracker`)")
    parser.add_argument("--key", required=required, help="the key to register under; by convention the device's "
                                                         "target (`edgekit targets`), e.g. android-arm64")


def _setup(args: argparse.Namespace) -> None:
    from edgekit.runtimes import emulator_system

    emulator_system.setup(force=args.force)


def _status(args: argparse.Namespace) -> None:
    from edgekit.runtimes import emulator_system

    print(json.dumps(emulator_system.status(), indent=2))


def _rpc_server(args: argparse.Namespace) -> None:
    from edgekit.runtimes import emulator, rpc

    if bool(args.tracker) != bool(args.key):
        raise EdgekitError("--tracker and --key go together: give both to register with a tracker, or neither.")
    if args.tracker:
        rpc.parse_tracker_url(f"tracker://{args.tracker}/{args.key}")
    _stop_on_sigterm()
    with emulator.rpc_server(args.port, tracker=args.tracker, key=args.key) as url:
        if args.tracker:
            _registered(url, f"127.0.0.1:{args.port}/{args.key}")
        print(f"TVM RPC server running in the aarch64 emulator: {url}  (Ctrl-C to stop)\n"
              f"  try: edgekit bench ARTIFACT --device {url}", flush=True)
        _wait()


def _registered(url: str, device: str, timeout_s: float = 60) -> None:
    """Wait until the tracker of `url` lists `device` (HOST:PORT/KEY), or say that it never did."""
    from edgekit.runtimes import rpc

    deadline = time.monotonic() + timeout_s
    while device not in rpc.devices(url):
        if time.monotonic() > deadline:
            raise EdgekitError(f"the RPC server {device} did not register with {url} within {timeout_s:g} s; is "
                               "the tracker reachable from the device?")
        time.sleep(0.2)


def _serve(args: argparse.Namespace) -> None:
    from edgekit.runtimes import rpc

    url = f"tracker://{args.tracker}/{args.key}"
    _stop_on_sigterm()
    server = rpc.serve(args.tracker, args.key, host=args.host, port=args.port)
    try:
        print(f"TVM RPC server on {args.host}:{args.port}, registering with the tracker as {url}  (Ctrl-C to stop)",
              flush=True)
        _wait()
    finally:
        server.terminate()


def _tracker(args: argparse.Namespace) -> None:
    from edgekit.runtimes import rpc

    _stop_on_sigterm()
    with rpc.tracker(args.host, args.port) as address:
        print(f"TVM RPC tracker on {address}  (Ctrl-C to stop)\n"
              f"  devices: edgekit device serve --tracker {address} --key TARGET\n"
              f"  clients: --device tracker://{address}/TARGET", flush=True)
        _wait()


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so what runs inside (servers, the tracker) is stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def _wait() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
