"""A real SMTP server for tests: it takes the mails SF sends on a reserved port and keeps them,
so a test can wait for a mail to an address and follow its link.

    receiver = MailReceiver().start()      # SF_SMTP_URL=receiver.url
    mail = await receiver.wait_for("alice@example.com")
    token = token_of(mail)
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

from harness.ports import release_ports, reserve_ports
from sf.node.mail_sink import MailSink, ReceivedMail

__all__ = ["MailReceiver", "ReceivedMail", "token_of"]


class MailReceiver:
    """An aiosmtpd server on a port reserved for this process, keeping every mail it gets.
    `stop` and `start` again (an SMTP outage) keep the port and the mails."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.port = reserve_ports(1)[0]
        self.mails: list[ReceivedMail] = []
        self._lock = threading.Lock()
        self._sink = MailSink(host, self.port, self._keep)

    def _keep(self, mail: ReceivedMail) -> None:
        with self._lock:
            self.mails.append(mail)

    @property
    def url(self) -> str:
        return self._sink.url

    def start(self) -> MailReceiver:
        self._sink.start()
        return self

    def stop(self) -> None:
        self._sink.stop()

    def close(self) -> None:
        self.stop()
        release_ports([self.port])

    def clear(self) -> None:
        with self._lock:
            self.mails.clear()

    def to(self, address: str) -> list[ReceivedMail]:
        """The mails received so far whose envelope names `address` (case-insensitively)."""
        with self._lock:
            return [mail for mail in self.mails
                    if address.lower() in (rcpt.lower() for rcpt in mail.recipients)]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 10.0) -> ReceivedMail:
        """The `count`-th mail to `address`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            mails = self.to(address)
            if len(mails) >= count:
                return mails[count - 1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no mail #{count} to {address} within {timeout} s "
                                   f"({len(mails)} arrived)")
            await asyncio.sleep(0.02)


def token_of(mail: ReceivedMail) -> str:
    """The token of the mail's link (its `#token=` fragment)."""
    for link in mail.links:
        fragment = urlsplit(link).fragment
        if fragment.startswith("token="):
            return fragment[len("token="):]
    raise ValueError(f"no link with a token in: {mail.text!r}")
