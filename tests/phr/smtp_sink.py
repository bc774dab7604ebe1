"""A tiny SMTP server for tests whose mail is sent by another process (a
real Celery worker): it accepts every message and keeps it, so a test can
count what really went over SMTP. Optionally it holds the answer to DATA
for messages to some recipients, so a test can kill the sender mid-send."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage


@dataclass
class Sink:
    messages: list[EmailMessage] = field(default_factory=list)
    hold: set[str] = field(default_factory=set)  # recipients whose DATA never gets an answer
    held: list[str] = field(default_factory=list)
    delay: float = 0.0  # seconds before accepting each message (a slow server)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]


def _handler(sink: Sink) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            self.reply("220 sink ESMTP")
            recipients: list[str] = []
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                command = line.decode(errors="replace").strip()
                verb = command[:4].upper()
                if verb == "EHLO":
                    self.reply("250-sink")
                    self.reply("250 8BITMIME")
                elif verb == "HELO":
                    self.reply("250 sink")
                elif verb == "MAIL":
                    recipients = []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    data = bytearray()
                    while True:
                        chunk = self.rfile.readline()
                        if not chunk or chunk in (b".\r\n", b".\n"):
                            break
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    if any(r in sink.hold for r in recipients):
                        with sink.lock:
                            sink.held.extend(recipients)
                        threading.Event().wait(120)  # the sender is killed meanwhile
                        return
                    if sink.delay:
                        threading.Event().wait(sink.delay)
                    message = message_from_bytes(bytes(data), policy=policy.default)
                    with sink.lock:
                        sink.messages.append(message)  # type: ignore[arg-type]
                    self.reply("250 OK queued")
                elif verb == "QUIT":
                    self.reply("221 Bye")
                    return
                else:  # RSET, NOOP
                    self.reply("250 OK")

    return Handler


@contextmanager
def smtp_sink() -> Iterator[Sink]:
    sink = Sink()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(sink))
    server.daemon_threads = True
    sink.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
