"""The fake OpenAI server (tests/fakes/openai_server.py) as a process of its own, with a request ledger.

    python llm_proc.py --ledger PATH [--text T] [--delay S] [--seed N]
                       [--faults 429:0.1,500:0.05,hang:0.02,disconnect:0.05]

Prints `port N` once listening. Every request appends {"t", "idempotency_key", "path", "reply"} to
the ledger (one write per line). Faults are drawn per request from the seeded generator: `429`
(with Retry-After: 1), `500`, `hang` (never answers) and `disconnect` (drops mid-stream); any other
request gets `--text`, streamed word by word with `--delay` seconds between chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.fakes import openai_server as fake


def parse_faults(spec: str) -> list[tuple[str, float]]:
    """`429:0.1,hang:0.02` → [("429", 0.1), ("hang", 0.02)]; probabilities must sum to ≤ 1."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, chance = item.partition(":")
        if kind not in ("429", "500", "hang", "disconnect"):
            raise SystemExit(f"unknown fault {kind!r}: use 429, 500, hang or disconnect")
        faults.append((kind, float(chance or "0")))
    if sum(c for _, c in faults) > 1:
        raise SystemExit("fault probabilities add up to more than 1")
    return faults


class LedgerServer(fake.FakeOpenAIServer):
    """Never runs out of replies: each request draws a fault or the default text, and is logged."""

    def __init__(
        self, ledger: Path, text: str, delay: float, faults: list[tuple[str, float]], seed: int
    ) -> None:
        super().__init__()
        self.ledger = ledger
        self.words = text.split() or ["ok"]
        self.delay = delay
        self.faults = faults
        self.random = random.Random(seed)

    def _choose(self) -> tuple[str, fake.Reply]:
        roll = self.random.random()
        for kind, chance in self.faults:
            if roll < chance:
                if kind == "429":
                    return kind, fake.error(429, "slow down", headers={"Retry-After": "1"})
                if kind == "500":
                    return kind, fake.error(500)
                if kind == "hang":
                    return kind, fake.hang()
                return kind, fake.disconnect(self.words[0])
            roll -= chance
        chunks = tuple(word + " " for word in self.words)
        return "text", fake.text(*chunks, delay=self.delay)

    def _record(self, request: fake.RecordedRequest) -> fake.Reply | None:
        with self._lock:
            kind, reply = self._choose()
        line = {
            "t": time.time(),
            "idempotency_key": request.headers.get("idempotency-key"),
            "path": request.path,
            "reply": kind,
        }
        fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
        return reply


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--text", default="ok")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--faults", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    server = LedgerServer(args.ledger, args.text, args.delay, parse_faults(args.faults), args.seed).start()
    print(f"port {server.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
