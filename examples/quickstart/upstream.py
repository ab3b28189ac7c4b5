#!/usr/bin/env python3
"""A tiny payments API with no idempotency of its own: every POST /charges creates a new
charge. `idem proxy` in front of it makes retries safe without changing a line here.

Usage: python3 upstream.py [PORT]   (default 3000)
"""
import itertools
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

charge_ids = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/charges":
            body = {"id": f"ch_{next(charge_ids)}", "amount": request.get("amount")}
            self.answer(201, body)
        elif self.path == "/charge":  # an operation for `idem serve`
            self.answer(200, {"charge_id": f"ch_{next(charge_ids)}", "amount": request.get("amount")})
        else:
            self.answer(404, {"error": "not found"})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
