"""`python -m tfclm serve`: a trained model behind OpenAI's API, with a page to try it at /."""

import signal
import sys

import click

from tfclm.cli.options import domain_errors, model_option


@click.command("serve")
@model_option("A tfclm output dir, a LoRA adapter dir or a save_pretrained folder.")
@click.option("--name", metavar="NAME", help="The model's name in the API.  [default: the dir's name]")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 opens it to the network."
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--api-key",
    envvar="TFCLM_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="Require 'Authorization: Bearer KEY' on /v1 (never printed or logged).",
)
@click.option(
    "--max-batch", type=click.IntRange(1, 256), default=32, show_default=True, help="Most rows decoded as one batch."
)
@click.option(
    "--max-batches",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Batches decoding at once, a token of each in turn: above 1, a request need not wait for a batch to "
    "end (a sooner first token, fewer tokens/s).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Most rows waiting; past it requests get 503.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Most new tokens a request may ask for (chat's default too).",
)
@click.option(
    "--top-k",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="top_k of requests that set none (an extension of OpenAI's API; 0: off).",
)
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds requests in flight get to finish after SIGTERM or SIGINT.",
)
@click.option("--xla/--no-xla", default=True, show_default=True, help="XLA (one compile per shape bucket) or eager.")
@domain_errors
def serve_command(
    model_dir, name, host, port, api_key, max_batch, max_batches, max_queue, max_tokens, top_k, grace, xla
):
    """Serve a model over OpenAI's HTTP API: /v1/completions, /v1/chat/completions (both stream), /v1/models,
    /health, and a chat page at /.

    Concurrent requests decode together in batches, each getting what it would
    get alone. SIGTERM or SIGINT stops taking requests, lets those in flight
    finish, and exits 0.

    \b
    Example:
        python -m tfclm serve --model runs/default --port 8000
        curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
            -d '{"prompt": "The list type", "max_tokens": 20, "temperature": 0}'
        TFCLM_API_KEY=secret python -m tfclm serve --model runs/chat --host 0.0.0.0
    """
    try:
        from tfclm.serve.app import Server
    except ModuleNotFoundError as exc:
        if exc.name not in ("starlette", "uvicorn"):
            raise
        click.echo(f"Error: tfclm serve needs {exc.name}; install it with: pip install 'tfclm[serve]'", err=True)
        sys.exit(1)
    server = Server(
        model_dir,
        name=name,
        api_key=api_key,
        max_batch=max_batch,
        max_batches=max_batches,
        max_queue=max_queue,
        max_tokens=max_tokens,
        top_k=top_k,
        xla=xla,
    )
    click.echo(f"serving {server.name!r} on http://{host}:{port} (the page: http://{host}:{port}/)", err=True)
    # uvicorn hands a signal it caught back to the handler it found once it has drained; a stop is no error here.
    for caught in (signal.SIGTERM, signal.SIGINT):
        signal.signal(caught, lambda *_: None)
    server.run(host=host, port=port, grace=grace)
