"""Chat: a message as readers get it (the live socket and the history), a page of them, a
channel's chat settings as sockets get them, and the `chat.send` frame a client sends; and the
text rules of a message: one line (`normalised`), something visible (`invisible`), no towers of
combining marks (`zalgo`), and the `skeleton` blocked terms and duplicates are compared by."""

from __future__ import annotations

import re
import unicodedata

from marshmallow import Schema, fields, validate

from sf.schemas.common import Storable, StrictSchema
from sf.schemas.dump import CompiledDump, UTCDateTime
from sf.schemas.pagination import PaginationSchema

CHAT_ROLES = ("owner", "moderator")
MAX_CHAT_TEXT = 500     # characters, after normalisation (NFC, one line, trimmed)
MAX_NONCE = 64          # characters of a client's nonce, echoed back in its ack or notice
MAX_MARKS = 4           # combining marks in a row on one character: more is "zalgo" text

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters that display
# as nothing (zero-width spaces and joiners, soft hyphen, fillers, variation selectors, tags,
# invisible operators, ...). They can split a blocked term without changing how it looks.
DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
_WHITESPACE = re.compile(r"\s+")  # `str.isspace` characters: newlines, tabs, NBSP, U+2028, ...
_MARKS = ("Mn", "Me")              # combining marks (nonspacing, enclosing)
# Letters to Unicode that show as blank: the braille blank and the Hangul fillers. In runs
# they made walls and pushed a faked "owner: ..." onto a line of its own
# (security.md#chat-one-line): the braille blank counts as whitespace; the fillers (default-
# ignorable, and inside a word as invisible as a zero-width space) are dropped.
BLANK_LETTERS = "\u115f\u1160\u2800\u3164\uffa0"
_FILLERS = re.compile("[\u115f\u1160\u3164\uffa0]")
_BLANK_RUN = re.compile(r"[\s\u2800]+")
# Characters that carry no letter to match or compare: format characters (the interlinear
# annotation marks U+FFF9-U+FFFB, Egyptian and Arabic format controls, ...), private-use and
# unassigned code points. Browsers draw many of them as nothing (security.md#chat-invisible-terms).
_NO_LETTER = ("Cf", "Co", "Cn")


def normalised(text: str) -> str:
    """A message as stored: NFC, without Hangul fillers, each run of whitespace (newlines
    and tabs too) and braille blanks one space, trimmed. Chat text is one line: no "chat
    walls", no line faking another user's."""
    return _BLANK_RUN.sub(" ", _FILLERS.sub("", unicodedata.normalize("NFC", text))).strip()


def _letterless(char: str) -> bool:
    return bool(DEFAULT_IGNORABLE.match(char)) or unicodedata.category(char) in _NO_LETTER


def skeleton(text: str) -> str:
    """What blocked terms are matched on and duplicates compared by: without the invisible
    (default-ignorable) characters, format, private-use and unassigned code points and
    combining marks, blank letters as whitespace, compatibility forms made plain (NFKD,
    then NFKC), case folded, whitespace runs one space, trimmed. So `bad\u200bword`,
    `bad\u00adword`, `ba\u0301dword`, `ＢＡＤＷＯＲＤ` and `badword` are one; letters of other
    scripts that look alike (Cyrillic `а`) are not."""
    text = "".join(char for char in unicodedata.normalize("NFKD", text)
                   if not _letterless(char)).casefold()
    # Folding can bring back composed letters or marks (`İ` → `i̇`): decompose once more.
    text = "".join(char for char in unicodedata.normalize("NFKD", text)
                   if unicodedata.category(char) not in _MARKS and not _letterless(char))
    text = "".join(char for char in unicodedata.normalize("NFKC", text) if not _letterless(char))
    return _BLANK_RUN.sub(" ", text).strip()


def invisible(text: str, shape: str | None = None) -> bool:
    """Whether text shows nothing: nothing left of its skeleton (`shape`, when the caller
    has it already) but whitespace, or no character but invisible or letterless ones,
    combining marks, whitespace and blank letters."""
    if not _WHITESPACE.sub("", skeleton(text) if shape is None else shape):
        return True
    return all(char.isspace() or char in BLANK_LETTERS or _letterless(char)
               or unicodedata.category(char) in _MARKS for char in text)


def zalgo(text: str) -> bool:
    """Whether more than MAX_MARKS combining marks follow one another (invisible characters
    between them do not break the run): text that towers over the lines around it."""
    run = 0
    for char in text:
        if unicodedata.category(char) in _MARKS:
            run += 1
            if run > MAX_MARKS:
                return True
        elif not DEFAULT_IGNORABLE.match(char):
            run = 0
    return False


class ChatAuthorSchema(CompiledDump):
    """Who sent a message; `roles` are their roles in the channel now."""

    id = fields.Integer()
    username = fields.String()
    avatar = fields.String(allow_none=True)
    roles = fields.List(fields.String(validate=validate.OneOf(CHAT_ROLES)))


class ChatMessageSchema(CompiledDump):
    """A chat message; `user` is null when its author's account was erased."""

    id = fields.Integer()
    stream_id = fields.Integer()
    user = fields.Nested(ChatAuthorSchema, allow_none=True)
    text = fields.String(metadata={"description": "plain text (never HTML), 1-500 characters"})
    sent_at = UTCDateTime()


class ChatMessageListSchema(Schema):
    data = fields.List(fields.Nested(ChatMessageSchema))
    pagination = fields.Nested(PaginationSchema)


class ChatSettingsSchema(CompiledDump):
    """A channel's chat settings as the live socket sends them (`chat.settings`);
    `blocked_terms` only to the owner and the channel's moderators."""

    enabled = fields.Boolean()
    slow_mode_seconds = fields.Integer(allow_none=True, metadata={
        "description": "seconds between two messages of one viewer (null: off)"})
    followers_only_minutes = fields.Integer(allow_none=True, metadata={
        "description": "only followers of at least this long may send (null: off)"})
    min_account_age_minutes = fields.Integer()
    blocked_terms = fields.List(fields.String())


class ChatSendSchema(StrictSchema):
    """`{"type": "chat.send", "text", "nonce"}` from a client of the live socket. The text's
    own rules (normalised, 1-500 characters, no control characters) are the send path's, so
    that each refusal has its notice code; here only a bound on what is read."""

    type = fields.String(required=True, validate=validate.Equal("chat.send"))
    text = Storable(0, 4 * MAX_CHAT_TEXT, required=True)
    nonce = Storable(0, MAX_NONCE, load_default=None, allow_none=True)


chat_message = ChatMessageSchema()
chat_settings = ChatSettingsSchema()
chat_send = ChatSendSchema()
