"""`edgekit device ...`: the aarch64 emulator and real-device runners. Wired in by edgekit/cli.py."""
from __future__ import annotations

import argparse
import json


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
    server.set_defaults(func=_rpc_server)


def _setup(args: argparse.Namespace) -> None:
    from edgekit.runtimes import emulator_system

    emulator_system.setup(force=args.force)


def _status(args: argparse.Namespace) -> None:
    from edgekit.runtimes import emulator_system

    print(json.dumps(emulator_system.status(), indent=2))


def _rpc_server(args: argparse.Namespace) -> None:
    import signal
    import sys
    import threading

    from edgekit.runtimes import emulator

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind, so the server inside is stopped too
    with emulator.rpc_server(args.port) as url:
        print(f"TVM RPC server running in the aarch64 emulator: {url}  (Ctrl-C to stop)\n"
              f"  try: edgekit bench ARTIFACT --device {url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
