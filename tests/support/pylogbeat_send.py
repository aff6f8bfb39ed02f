#!/usr/bin/env python3
"""Sends events to a Beats (Lumberjack v2) server with pylogbeat, an independent client.

Each window waits for its ACK before the next is sent. Prints "sent N" and exits 0 on success;
any error is printed and exits 1. Event i is {"request_id": "<prefix>-<i>", "message": ...}.
"""
import argparse
import sys

import pylogbeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--window", type=int, default=500)
    p.add_argument("--prefix", default="pylogbeat")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    a = p.parse_args()
    tls = a.ca is not None
    client = pylogbeat.PyLogBeatClient(
        "127.0.0.1", a.port, timeout=20, ssl_enable=tls, ssl_verify=tls,
        ca_certs=a.ca, certfile=a.cert, keyfile=a.key)
    sent = 0
    try:
        with client:
            while sent < a.count:
                n = min(a.window, a.count - sent)
                batch = [{
                    "request_id": f"{a.prefix}-{sent + i}",
                    "message": f"event {sent + i} from pylogbeat",
                    "status": "success",
                    "latency_ms": 42,
                    "fields": {"environment": "staging", "service": "pylogbeat"},
                } for i in range(n)]
                client.send(batch)
                sent += n
    except Exception as e:  # report any failure to the test
        print(f"failed after {sent}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"sent {sent}")


if __name__ == "__main__":
    main()
