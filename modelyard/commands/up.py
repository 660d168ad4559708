"""`modelyard up -f model.yaml`: local mode. Validates the Model, then runs the same steps as the
cluster (download → convert when needed → serve) as child processes, prints the endpoint and a
curl to try it, and stops everything cleanly on Ctrl-C."""
from __future__ import annotations

import signal
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("up", help="run a Model locally: download, convert, serve (no cluster)",
                       description="Run a Model on this machine with the same steps the operator runs.")
    p.add_argument("-f", "--file", required=True, type=Path, help="the Model YAML")
    p.add_argument("--port", type=int, help="port to serve on (default: spec.serving.port, 8000)")
    p.add_argument("--workdir", type=Path, default=Path(".modelyard"),
                   help="cache and logs (default .modelyard); reused by the next `up`")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require one of the API keys in FILE (one per line, re-read on change) on /v1/*")
    p.add_argument("--chat", action="store_true", help="also open a web chat page (modelyard chat) on the endpoint")
    p.add_argument("--chat-port", type=int, default=7860, help="port of the chat page (default 7860)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelyard.api import ValidationError, load_model
    from modelyard.runtime.local import LocalRun, Options, StepFailed

    try:
        model = load_model(args.file)
    except OSError as exc:
        print(f"modelyard up: -f {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"modelyard up: invalid Model:\n{exc}", file=sys.stderr)
        return 2
    from modelyard.commands.serve import check_key_file

    if not check_key_file(args, "modelyard up"):
        return 2
    key_file = str(Path(args.api_key_file).resolve()) if args.api_key_file else None
    opts = Options(yaml_path=args.file, workdir=args.workdir.resolve(), port=args.port or model.spec.serving.port,
                   api_key_file=key_file, chat_port=args.chat_port if args.chat else None)
    local = LocalRun(model, opts)

    def on_signal(signum, frame):
        print(f"\nmodelyard up: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        local.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"modelyard up: {model.name} (engine {model.spec.engine}, precision {model.spec.precision}, "
          f"gpus {model.spec.gpus}); work folder {opts.workdir}", flush=True)
    try:
        return local.run()
    except KeyboardInterrupt:
        local.shutdown()
        print("modelyard up: stopped", flush=True)
        return 0
    except StepFailed as exc:
        local.shutdown()
        print(f"modelyard up: {exc}", file=sys.stderr)
        return 1
