"""A local SMTP server that accepts every mail and hands it to a callback (aiosmtpd, in a
thread of its own): `make run`'s sink (`python -m sf.node.mail_sink HOST PORT DIR`: each mail
kept as a `.eml` file, its links logged) and the tests' receiver (`harness/smtp.py`). Never a
relay: nothing it takes goes anywhere else."""

from __future__ import annotations

import argparse
import email
import email.policy
import logging
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from sf.observability import configure_logging

log = logging.getLogger("sf.mail_sink")

LINK_RE = re.compile(r"https?://[^\s<>\"']+")


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as the SMTP server got it: envelope, raw bytes and the parsed message."""

    sender: str
    recipients: tuple[str, ...]
    raw: bytes
    message: EmailMessage

    def part(self, subtype: str) -> str:
        """The text of the `text/<subtype>` part ('' when there is none)."""
        body = self.message.get_body(preferencelist=(subtype,))
        return str(body.get_content()) if body is not None else ""

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")

    @property
    def links(self) -> list[str]:
        """The links of the plain-text part, in order."""
        return LINK_RE.findall(self.text)


class _Handler:
    def __init__(self, deliver: Callable[[ReceivedMail], None]) -> None:
        self.deliver = deliver

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.deliver(ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), raw, message))
        return "250 Message accepted for delivery"


class MailSink:
    """An SMTP server on `host:port` calling `deliver` (in its thread) for each mail."""

    def __init__(self, host: str, port: int, deliver: Callable[[ReceivedMail], None]) -> None:
        self.host, self.port = host, port
        self._deliver = deliver
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> MailSink:
        """Listen (returns once the server answers); again after `stop`, on the same port."""
        if self._controller is None:
            controller = Controller(_Handler(self._deliver), hostname=self.host, port=self.port)
            controller.start()
            self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()


class MailFolder:
    """Keeps each mail as `<directory>/<time>-<n>.eml` and prints who it went to and its links
    (a developer follows a verification or reset link from the console)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def __call__(self, mail: ReceivedMail) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{stamp}-{self.count:04d}.eml"
        path.write_bytes(mail.raw)
        log.info("mail received: %s (%s)", mail.message["Subject"], path)
        # Its links on stdout, not in the log (which redacts their tokens): this is the
        # development sink, whose whole point is following them.
        print(f"mail to {', '.join(mail.recipients)}: {mail.message['Subject']}", flush=True)
        for link in mail.links:
            print(f"  {link}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the sink until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sink = MailSink(args.host, args.port, MailFolder(args.directory)).start()
    log.info("local SMTP sink on %s: mails kept in %s", sink.url, args.directory)
    try:
        stop.wait()
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
