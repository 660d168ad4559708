"""`python -m tests.k8s --port PORT --kubeconfig FILE [--crd PATH ...]`: serve in the foreground."""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import threading

from tests.k8s.runner import EmulatorThread

DEFAULT_CRD = pathlib.Path(__file__).resolve().parents[2] / "crds" / "models.modelyard.io.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.k8s", description=__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--kubeconfig", type=pathlib.Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--crd", action="append", type=pathlib.Path, default=None,
                        help=f"CRD file or directory to preload (repeatable; default {DEFAULT_CRD} if present)")
    args = parser.parse_args(argv)
    crds = args.crd if args.crd is not None else ([DEFAULT_CRD] if DEFAULT_CRD.exists() else [])
    for crd in crds:
        if not crd.exists():
            print(f"--crd {crd}: no such file", file=sys.stderr)
            return 2
    emu = EmulatorThread(port=args.port, crds=crds)
    try:
        emu.start()
    except (RuntimeError, ValueError) as exc:
        print(f"cannot start the emulator on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    emu.write_kubeconfig(args.kubeconfig)
    print(f"Kubernetes API emulator on {emu.url}; kubeconfig: {args.kubeconfig}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
