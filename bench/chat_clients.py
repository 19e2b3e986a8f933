"""bench/chat.py's client side: chat readers and senders on `/ws/streams/{id}/live`, in
processes of their own pinned to CLIENT_CPU and driven over a pipe by bench/chat_run.py.

They are bench/viewers_clients.py's viewers (raw non-blocking sockets on the asyncio loop, each
from an address of its own, arrivals stamped by the kernel) with chat on top:

- a reader walks every frame (answering pings, noticing closes) but decodes only when sampled;
  a sampled reader keeps the id of every `chat.message` it gets (history included), in order,
  and the delay of each: the kernel arrival (SO_TIMESTAMPNS, CLOCK_REALTIME) minus the send
  time the sender wrote into the text (time.time(), the same clock: all processes run on this
  machine, so no clock offset enters);
- a sender is a signed-in viewer (`?ticket=` from `POST /api/ws/ticket`) that sends
  `chat.send` on an open-loop schedule, stamping the text with time.time() just before the
  write, and keeps the `chat.ack` (nonce → id) or the `chat.notice` it gets back.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from array import array
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.viewers_clients import (  # noqa: E402
    DONE,
    OPEN,
    Fleet,
    Viewer,
    child_setup,
    masked_frame,
    ramp,
    serve_commands,
)
from harness.client import Connection  # noqa: E402

TEXT_PREFIX = "bench"  # chat text: "bench <sender>.<seq> <send time>", unique (no duplicates)


def message_text(sender: int, seq: int, sent: float) -> str:
    return f"{TEXT_PREFIX} {sender}.{seq} {sent:.6f}"


def sent_time(text: str) -> float | None:
    """The send time a bench sender wrote into a message's text (None: not the bench's)."""
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != TEXT_PREFIX:
        return None
    try:
        return float(parts[2])
    except ValueError:
        return None


def items_of(payload: bytes) -> list[dict[str, Any]]:
    """The messages of one frame: itself, or the items of a `batch`."""
    body = json.loads(payload)
    if body.get("type") == "batch":
        return [item for item in body.get("items", []) if isinstance(item, dict)]
    return [body]


class ChatReader(Viewer):
    """A viewer of `/live`; when sampled, keeps every chat message id it gets and its delay."""

    __slots__ = ("sampled", "frames", "ids", "history_ids", "delays", "stamped", "lag",
                 "first_arrival", "kinds")

    def __init__(self, fleet: Fleet, sock: socket.socket, key: bytes) -> None:
        super().__init__(fleet, sock, key)
        # Sampled by source address (params['sampled'], a set): each reader has its own.
        self.sampled = sock.getsockname()[0] in fleet.params.get("sampled", ())
        self.frames = 0
        self.ids = array("q")           # chat.message ids in arrival order (sampled only)
        self.history_ids = array("q")   # ids in chat.history on connect
        self.delays = array("d")        # kernel arrival - send time, per bench message
        self.stamped = array("d")       # the server's sent_at - send time, per bench message
        self.lag = 0.0                  # the largest arrival → read time (this generator's lag)
        self.first_arrival = 0.0        # of the first frame: the socket has joined by then
        self.kinds: Counter[str] = Counter()

    def on_text(self, arrival: float, read: float, payload: bytes) -> None:
        self.frames += 1
        if not self.first_arrival:
            self.first_arrival = arrival
        if not self.sampled:
            return
        self.lag = max(self.lag, read - arrival)
        try:
            items = items_of(payload)
        except ValueError:
            self.kinds["undecodable"] += 1
            return
        for item in items:
            kind = str(item.get("type"))
            self.kinds[kind] += 1
            if kind == "chat.message":
                self.ids.append(int(item["id"]))
                sent = sent_time(str(item.get("text", "")))
                if sent is not None:
                    self.delays.append(arrival - sent)
                    try:
                        stamp = datetime.fromisoformat(str(item["sent_at"])).timestamp()
                        self.stamped.append(stamp - sent)
                    except (KeyError, ValueError):
                        pass
            elif kind == "chat.history":
                for message in item.get("messages", []):
                    self.history_ids.append(int(message["id"]))


def reader_process(pipe: Any, params: dict[str, Any]) -> None:
    """A share of the readers (anonymous viewers of `/live`): ramp at params['rate']/s, hold
    until told to stop; readers from an address in params['sampled'] decode and record."""
    child_setup(niceness=10)  # arrivals are stamped in the kernel: they can wait for the CPU

    async def main() -> None:
        fleet = Fleet(params, ChatReader)
        ramping = asyncio.ensure_future(ramp(fleet, params))

        def status() -> dict[str, Any]:
            state = fleet.status()
            state["frames"] = sum(v.frames for v in fleet.viewers)  # type: ignore[attr-defined]
            return state

        def stop() -> dict[str, Any]:
            ramping.cancel()
            state = status()
            fleet.close_all()
            readers = []
            for viewer in fleet.viewers:
                assert isinstance(viewer, ChatReader)
                if not viewer.sampled or not viewer.opened:
                    continue
                dropped = viewer.end_reason != "stopped"
                readers.append({
                    "opened": viewer.opened, "first_arrival": viewer.first_arrival,
                    "ended": viewer.ended if dropped else 0.0,
                    "reason": viewer.end_reason if dropped else "",
                    "ids": viewer.ids.tobytes(), "history": viewer.history_ids.tobytes(),
                    "delays": viewer.delays.tobytes(), "stamped": viewer.stamped.tobytes(),
                    "lag": viewer.lag,
                    "kinds": dict(viewer.kinds)})
            return {"status": state, "readers": readers}

        result = await serve_commands(pipe, {"status": status, "stop": stop})
        pipe.send(result)

    asyncio.run(main())


class ChatSender(ChatReader):
    """A signed-in viewer of `/live` that sends; keeps its acks and notices."""

    __slots__ = ("number", "acks", "notices")

    def __init__(self, fleet: Fleet, sock: socket.socket, key: bytes) -> None:
        super().__init__(fleet, sock, key)
        self.number = -1
        self.acks: dict[str, tuple[int, float]] = {}      # nonce → (id, kernel arrival)
        self.notices: list[tuple[str | None, str]] = []    # (nonce, code)

    def on_text(self, arrival: float, read: float, payload: bytes) -> None:
        self.frames += 1
        if not self.first_arrival:
            self.first_arrival = arrival
        # Every sender gets the whole chat too: decode only frames with something for it.
        if b'"chat.ack"' not in payload and b'"chat.notice"' not in payload:
            return
        for item in items_of(payload):
            kind = item.get("type")
            if kind == "chat.ack":
                self.acks[str(item["nonce"])] = (int(item["id"]), arrival)
            elif kind == "chat.notice":
                self.notices.append((item.get("nonce"), str(item.get("code"))))


def sender_process(pipe: Any, params: dict[str, Any]) -> None:
    """params['tokens'] signed-in senders: each takes a ticket and opens `/live` from its own
    address; on "start" they send params['rate'] messages a second each, spread evenly."""
    child_setup()  # not niced: a late send only shifts its stamp, but acks should be read

    async def main() -> None:
        fleet = Fleet(params, ChatSender)
        senders: list[ChatSender] = []
        ticket_failures: Counter[str] = Counter()
        sent: dict[str, tuple[float, float]] = {}       # nonce → (send time, due time)
        unsendable: Counter[str] = Counter()
        state: dict[str, Any] = {"task": None}

        async def connect_all() -> None:
            await asyncio.sleep(max(0.0, params["start_at"] - time.time()))  # with the readers
            http = Connection("127.0.0.1", params["port"])
            for number, (token, source) in enumerate(zip(params["tokens"], params["sources"],
                                                         strict=True)):
                try:
                    status, raw = await asyncio.wait_for(http.request(
                        "POST", "/api/ws/ticket", {"Authorization": f"Bearer {token}"}), 10)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as error:
                    http.close()
                    ticket_failures[type(error).__name__] += 1
                    continue
                if status != 200:
                    ticket_failures[f"http {status}"] += 1
                    continue
                ticket = json.loads(raw)["ticket"]
                viewer = await fleet.connect(source, f"?ticket={ticket}")
                if isinstance(viewer, ChatSender):
                    viewer.number = number
                    senders.append(viewer)
            http.close()

        connecting = asyncio.ensure_future(connect_all())

        async def send_all(start_at: float, seconds: float) -> None:
            total_rate = params["rate"] * len(senders)
            count = int(seconds * total_rate)
            for index in range(count):
                due = start_at + index / total_rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sender = senders[index % len(senders)]
                nonce = f"{sender.number}.{index // len(senders)}"
                if sender.state != OPEN:
                    unsendable["closed" if sender.state == DONE else "not open"] += 1
                    continue
                moment = time.time()
                text = message_text(sender.number, index // len(senders), moment)
                sender.send(masked_frame(0x1, json.dumps(
                    {"type": "chat.send", "text": text, "nonce": nonce}).encode()))
                sent[nonce] = (moment, due)

        def status() -> dict[str, Any]:
            task = state["task"]
            return {"connected": connecting.done(),
                    "open": sum(1 for s in senders if s.state == OPEN),
                    "joined": sum(1 for s in senders if s.first_arrival),
                    "ticket_failures": dict(ticket_failures), "failures": dict(fleet.failures),
                    "drops": dict(fleet.drops), "sent": len(sent),
                    "acked": sum(len(s.acks) for s in senders),
                    "notices": dict(Counter(code for s in senders for _, code in s.notices)),
                    "sending": task is not None and not task.done(),
                    "error": repr(task.exception()) if task is not None and task.done()
                    and not task.cancelled() and task.exception() else None}

        def start(start_at: float, seconds: float) -> bool:
            state["task"] = asyncio.ensure_future(send_all(start_at, seconds))
            return True

        def stop() -> dict[str, Any]:
            if state["task"] is not None:
                state["task"].cancel()
            connecting.cancel()
            result = {"status": status(), "sent": sent, "unsendable": dict(unsendable),
                      "acks": {nonce: ack for s in senders for nonce, ack in s.acks.items()},
                      "notices": [notice for s in senders for notice in s.notices]}
            fleet.close_all()
            return result

        result = await serve_commands(pipe, {"status": status, "start": start, "stop": stop})
        pipe.send(result)

    asyncio.run(main())
