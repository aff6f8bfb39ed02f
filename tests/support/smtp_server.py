#!/usr/bin/env python3
"""SMTP server for sheepdog's mail tests (aiosmtpd).

Stores every accepted message as one JSON line in --out with the envelope and the decoded
headers and bodies, so tests compare plain strings. Options turn on STARTTLS (with a
certificate the test made), AUTH, temporary (451) or permanent (550) failures, or a black hole
that accepts connections and never answers. Prints "ready <port>" once listening and runs until
stdin closes or it is terminated.
"""

import argparse
import asyncio
import email
import email.policy
import json
import signal
import socket
import ssl
import sys
import threading
import warnings

# aiosmtpd warns about its own use of Session.login_data on every successful AUTH.
warnings.filterwarnings("ignore", category=DeprecationWarning)

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:
    sys.stderr.write("aiosmtpd is not installed: pip install aiosmtpd (scripts/ci-deps/email.sh)\n")
    sys.exit(3)


class Store:
    def __init__(self, path, tempfail, reject):
        self.path = path
        self.tempfail = tempfail
        self.reject = reject
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        if self.tempfail > 0:
            self.tempfail -= 1
            return "451 4.3.0 Temporary failure, try again later"
        if self.reject:
            return "550 5.7.1 Message rejected by the test server"
        raw = envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = None
        html = None
        for part in msg.walk():
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            if ctype == "text/plain" and text is None:
                text = part.get_content().replace("\r\n", "\n")
            elif ctype == "text/html" and html is None:
                html = part.get_content().replace("\r\n", "\n")
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode("utf-8", "replace")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "cc": str(msg.get("Cc", "")),
            "subject": str(msg.get("Subject", "")),
            "text": text,
            "html": html,
            "tls": session.ssl is not None,
            "login": login,
        }
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return "250 2.0.0 OK stored"


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if auth_data.login.decode() == user and auth_data.password.decode() == password:
            return AuthResult(success=True, auth_data=auth_data)
        # handled=False makes aiosmtpd answer 535 itself.
        return AuthResult(success=False, handled=False)

    return authenticate


def black_hole(port):
    """Accepts connections and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    held = []

    def accept():
        while True:
            conn, _ = sock.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return sock


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", help="JSON-lines file receiving each message")
    ap.add_argument("--cert", help="PEM certificate; enables STARTTLS")
    ap.add_argument("--key", help="PEM private key for --cert")
    ap.add_argument("--require-starttls", action="store_true")
    ap.add_argument("--auth", help="USER:PASSWORD; AUTH is then required (after STARTTLS)")
    ap.add_argument("--tempfail", type=int, default=0, help="answer 451 to the first N messages")
    ap.add_argument("--reject", action="store_true", help="answer 550 to every message")
    ap.add_argument("--blackhole", action="store_true", help="accept connections, never answer")
    args = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    if args.blackhole:
        sock = black_hole(args.port)
        print(f"ready {args.port}", flush=True)
    else:
        if not args.out:
            ap.error("--out is required unless --blackhole")
        kwargs = {}
        if args.cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.cert, args.key)
            kwargs["tls_context"] = ctx
            kwargs["require_starttls"] = args.require_starttls
        if args.auth:
            user, _, password = args.auth.partition(":")
            kwargs["authenticator"] = authenticator_for(user, password)
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = bool(args.cert)
        handler = Store(args.out, args.tempfail, args.reject)
        controller = Controller(
            handler, hostname="127.0.0.1", port=args.port, enable_SMTPUTF8=True, **kwargs
        )
        controller.start()
        print(f"ready {args.port}", flush=True)

    def wait_stdin():
        try:
            sys.stdin.read()
        finally:
            stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    stop.wait()
    if not args.blackhole:
        controller.stop()


if __name__ == "__main__":
    main()
