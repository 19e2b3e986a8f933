"""Live chat (API.md "Live socket and chat"): the `/ws/streams/{id}/live` socket, which is the
viewers socket plus chat, and a stream's chat history."""

from __future__ import annotations

import json
from typing import Any

from sf.errors import DomainError
from sf.handlers import inputs
from sf.handlers.base import APIHandler
from sf.handlers.viewers import STREAM_ID, ViewersSocket
from sf.schemas import page, page_query
from sf.schemas.chat import MAX_NONCE, chat_message, chat_send
from sf.schemas.dump import encode_json
from sf.services.chat import notice
from sf.services.viewers import CLOSE_UNAUTHORIZED

# A chat.send of 500 characters, each escaped as a JSON surrogate pair (12 bytes), fits; a
# larger frame closes the socket with 1009 (security.md#oversized-chat-frames).
MAX_FRAME_BYTES = 8 * 1024


class LiveSocket(ViewersSocket):
    """What a watch page opens: everything `/viewers` does (tickets, Origin, close codes, the
    viewer count, `viewers` and `stream` messages), plus the stream's chat. The sender is
    always the ticket's account, never anything a frame says (security.md#chat-impersonation)."""

    # Moderators may send 100 messages in 30 s; pings and pongs count too. A flood of frames
    # beyond closes with 1008 (security.md#chat-frame-flood).
    messages_per_window, message_window = 40, 10.0

    @property
    def max_message_size(self) -> int:
        return MAX_FRAME_BYTES

    async def open(self, stream_id: str) -> None:
        await super().open(stream_id)
        if self.joined:
            await self.services.chat.join(self, self.stream_id, self.owner_id)

    async def on_message(self, message: str | bytes) -> None:
        """A `chat.send`: answered with a `chat.ack` or a `chat.notice` (this socket only).
        Its frames were counted as they came (`count_inbound`)."""
        if not self.joined or self.ws_connection is None or self.ws_connection.is_closing():
            return
        nonce = None
        try:
            data = json.loads(message)
            if isinstance(data, dict) and isinstance(data.get("nonce"), str):
                nonce = data["nonce"][:MAX_NONCE]
            frame = inputs.load(chat_send, data)
        except (ValueError, TypeError, RecursionError, DomainError):
            answer = notice("invalid_message", nonce)
        else:
            answer = await self.services.chat.send(self.account_id, self.stream_id,
                                                   self.owner_id, frame["text"], frame["nonce"],
                                                   self.session_id)
        self.send(encode_json(answer))
        if answer.get("code") == "not_signed_in" and self.account_id is not None:
            # Signed in when it opened, not any more: the session ended (logout, password
            # change) or the account went; the session check would close it within seconds.
            self.close(CLOSE_UNAUTHORIZED, "session ended")

    def on_close(self) -> None:
        self.services.chat.leave(self)
        super().on_close()


class ChatMessagesHandler(APIHandler):
    auth = "optional"

    async def get(self, stream_id: str) -> None:
        """A stream's chat history, newest first (messages moderators hid are left out).
        ---
        summary: Chat history
        tags: [chat]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of messages, content: {application/json: {schema: ChatMessageListSchema}}}
          404: {description: No such stream (or private to others), content: {application/json: {schema: ErrorSchema}}}
          422: {description: Invalid query, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        viewer = self.claims.user_id if self.claims else None
        stream = await self.services.streams.get_stream(int(stream_id), viewer)
        messages, cursor = await self.services.chat.history_page(stream.id, query["limit"],
                                                                 query["cursor"])
        self.write_json(page(messages, cursor, chat_message))


routes: list[tuple[str, Any]] = [
    (rf"/api/streams/{STREAM_ID}/chat/messages", ChatMessagesHandler),
    (rf"/ws/streams/{STREAM_ID}/live", LiveSocket),
]
