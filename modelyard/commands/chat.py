"""`modelyard chat --endpoint URL`: a web chat page over any OpenAI-compatible endpoint (gradio's
``gr.load_chat``), for trying a served model in a browser.

Bound to 127.0.0.1 unless ``--host`` says otherwise; never a public share link. With
``--api-key-file`` the page's server sends one of the keys (the browser never sees it).
Needs the ``ui`` extra (``pip install 'modelyard[ui]'``).
"""
from __future__ import annotations

import os
import sys


def register(sub) -> None:
    p = sub.add_parser("chat", help="a web chat page over an OpenAI-compatible endpoint (gradio)",
                       description="Serve a chat page for an OpenAI-compatible endpoint on this machine.")
    p.add_argument("--endpoint", required=True, help="the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-file", metavar="FILE", help="file with the endpoint's API key (first key is used)")
    p.add_argument("--model", help="model name to chat with (default: the first one the endpoint lists)")
    p.add_argument("--port", type=int, default=7860, help="port of the chat page (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=run)


def _key(path: str | None) -> str | None:
    if not path:
        return None
    from modelyard.apikeys import KeyFile

    return KeyFile(path).first()


def _first_model(endpoint: str, key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(endpoint.rstrip("/") + "/models", headers=headers, timeout=30)
    if r.status_code == 401:
        raise ValueError(f"{endpoint} wants an API key: pass --api-key-file")
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def run(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        print("modelyard chat: gradio is not installed; pip install 'modelyard[ui]'", file=sys.stderr)
        return 2
    endpoint = args.endpoint.rstrip("/")
    try:
        key = _key(args.api_key_file)
        model = args.model or _first_model(endpoint, key)
    except Exception as exc:  # a clear line, not a traceback: the endpoint is down or refuses us
        print(f"modelyard chat: {exc}", file=sys.stderr)
        return 2
    page = gr.load_chat(endpoint, model=model, token=key or "none", file_types=None)
    print(f"modelyard chat: {model} at {endpoint}; open http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                quiet=True)
    return 0
