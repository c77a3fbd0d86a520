"""Load test: N concurrent requests through gradio_client to a local app (loopback only).

    python -m safety_demo.eval.load --requests 200 --concurrency 8 --max-new-tokens 4

Starts `app.py` in a subprocess on 127.0.0.1 and a free port, then sends the requests from
`concurrency` client threads. Every request must finish with an answer or be refused
cleanly by the queue ("queue is full"), nothing may be lost or hang, and the server's
resident memory after all requests is compared with its memory after the first 20.
Bounded in count (`--requests`) and time (`--timeout`).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LoadResult:
    sent: int = 0
    answered: int = 0
    queue_full: int = 0
    failed: list[str] = field(default_factory=list)
    rss_mb: dict[int, float] = field(default_factory=dict)  # requests done -> server RSS
    seconds: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def served_app(queue: int = 16, startup_seconds: float = 180.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """`app.py` in a subprocess on loopback and a free port: yields (url, process), stops it after."""
    from gradio_client import Client

    port = _free_port()
    # no example precomputation at start-up: it would decode beside the requests being measured
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "SAFETY_DEMO_QUEUE": str(queue),
           "SAFETY_DEMO_INSTANT_EXAMPLES": "0"}
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + startup_seconds
        while True:  # wait for the server to answer
            try:
                Client(url, verbose=False)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the app did not start")
                time.sleep(2)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def run_load(requests: int, concurrency: int, max_new_tokens: int, model: str, timeout: float, queue: int) -> LoadResult:
    from gradio_client import Client, handle_file

    from ..data.examples import ensure_examples
    from ..methods import knob_values

    result = LoadResult()
    with served_app(queue) as (url, server):
        knobs = knob_values(max_new_tokens=max_new_tokens)
        examples = ensure_examples()
        lock = threading.Lock()
        local = threading.local()
        t0 = time.time()

        def one(i: int) -> None:
            if time.time() - t0 > timeout:
                with lock:
                    result.failed.append(f"#{i}: not sent, time bound reached")
                return
            if not hasattr(local, "client"):
                local.client = Client(url, verbose=False)
            image, prompt = examples[i % len(examples)]
            try:
                out = local.client.predict(handle_file(image), prompt, model, "PCA", "safesteer", *knobs, api_name="/generate")
                ok = 'class="tok' in str(out[1]) and str(out[0]).startswith("Done")
                with lock:
                    result.answered += ok
                    if not ok:
                        result.failed.append(f"#{i}: empty answer")
            except Exception as exc:  # the queue refusing is clean; anything else is a failure
                with lock:
                    if "queue is full" in str(exc).lower():
                        result.queue_full += 1
                    else:
                        result.failed.append(f"#{i}: {type(exc).__name__}: {str(exc)[:120]}")
            with lock:
                result.sent += 1
                if result.sent in (20, requests):
                    result.rss_mb[result.sent] = _rss_mb(server.pid)

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(requests)))
        result.seconds = time.time() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--timeout", type=float, default=3600.0, help="stop sending after this many seconds")
    parser.add_argument("--queue", type=int, default=16, help="the app's queue size (SAFETY_DEMO_QUEUE)")
    args = parser.parse_args()
    if not 1 <= args.requests <= 1000 or not 1 <= args.concurrency <= 64:
        parser.error("requests must be in [1, 1000] and concurrency in [1, 64]")
    r = run_load(args.requests, args.concurrency, args.max_new_tokens, args.model, args.timeout, args.queue)
    growth = (r.rss_mb.get(args.requests, float("nan")) / r.rss_mb.get(20, float("nan")) - 1) if 20 in r.rss_mb else float("nan")
    print(f"requests {r.sent}/{args.requests} sent with {args.concurrency} concurrent clients in {r.seconds:.0f} s")
    print(f"answered {r.answered}, refused cleanly by a full queue {r.queue_full}, failed {len(r.failed)}")
    print(f"server RSS: after 20 requests {r.rss_mb.get(20, float('nan')):.0f} MB, after {args.requests} {r.rss_mb.get(args.requests, float('nan')):.0f} MB ({growth:+.1%})")
    for line in r.failed[:10]:
        print("  ", line)
    sys.exit(0 if not r.failed and r.answered + r.queue_full == args.requests and abs(growth) <= 0.10 else 1)


if __name__ == "__main__":
    main()
