"""A plain OpenRLHF-style reward server for the tests (no raylhf imports), with failure knobs.

    python tests/reward_suite/openrlhf_server.py [--port 0] [--fail-first N] [--fail-status 503] [--delay S]
        [--garbage] [--wrong-count] [--token T] [--certfile F --keyfile F]

POST (any path) {"query": [...], "prompts": [...], "labels": [...]} -> {"rewards": [...], "scores": [...],
"extra_logs": {...}}. The reward echoes the input so order is checkable: the response part of the query
(query minus prompt) as a number (its length if it is not one), plus 0.5 when it equals the label.
GET /stats -> {"posts": n, "max_in_flight": m}. Prints "openrlhf-server ready on port P" once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

from aiohttp import web


def reward(query: str, prompt: str | None, label: object) -> float:
    response = query[len(prompt):] if prompt and query.startswith(prompt) else query
    try:
        value = float(response)
    except ValueError:
        value = float(len(response))
    return value + (0.5 if label is not None and str(label) == response else 0.0)


def make_app(args: argparse.Namespace) -> web.Application:
    state = {"posts": 0, "in_flight": 0, "max_in_flight": 0}

    async def handle(request: web.Request) -> web.Response:
        state["posts"] += 1
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if args.token is not None and request.headers.get("Authorization") != f"Bearer {args.token}":
                return web.json_response({"detail": "unauthorized"}, status=401)
            if args.delay:
                await asyncio.sleep(args.delay)
            if state["posts"] <= args.fail_first:
                return web.json_response({"detail": "try again later"}, status=args.fail_status)
            data = await request.json()
            query = data["query"]
            prompts = data.get("prompts") or [None] * len(query)
            labels = data.get("labels") or [None] * len(query)
            rewards = [reward(q, p, lab) for q, p, lab in zip(query, prompts, labels, strict=True)]
            if args.garbage:
                return web.Response(text="<html>this is not json", content_type="text/html")
            if args.wrong_count:
                rewards = rewards[:-1]
            return web.json_response({"rewards": rewards, "scores": rewards,
                                      "extra_logs": {"query_chars": [float(len(q)) for q in query]}})
        finally:
            state["in_flight"] -= 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"posts": state["posts"], "max_in_flight": state["max_in_flight"]})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", handle)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-first", type=int, default=0, help="answer --fail-status to the first N POSTs")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--garbage", action="store_true", help="answer 200 with invalid JSON")
    parser.add_argument("--wrong-count", action="store_true", help="answer one reward fewer than queries")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--certfile", default=None, help="serve HTTPS with this certificate (and --keyfile)")
    parser.add_argument("--keyfile", default=None)
    args = parser.parse_args()
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    runner = web.AppRunner(make_app(args), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    print(f"openrlhf-server ready on port {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
