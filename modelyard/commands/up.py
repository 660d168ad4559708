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
    p.add_argument("-f", "--file", required=True, type=Path, action="append",
                   help="a Model YAML; repeat for several Models behind one gateway on one port")
    p.add_argument("--port", type=int, help="port to serve on (default: spec.serving.port, 8000; "
                   "with several Models, the gateway's port, default 8000)")
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

    models = []
    for path in args.file:
        try:
            models.append(load_model(path))
        except OSError as exc:
            print(f"modelyard up: -f {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except ValidationError as exc:
            print(f"modelyard up: invalid Model:\n{exc}", file=sys.stderr)
            return 2
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        print(f"modelyard up: two files name the same Model ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
              "metadata.name must differ", file=sys.stderr)
        return 2
    from modelyard.commands.serve import check_key_file

    if not check_key_file(args, "modelyard up"):
        return 2
    if len(models) > 1 or models[0].spec.scaling is not None:
        from modelyard.commands.up_fleet import run_fleet

        args.port = args.port or 8000
        return run_fleet(models, args.file, args)
    model, args.file = models[0], args.file[0]
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
