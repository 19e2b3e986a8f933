"""marshmallow schemas, one module per resource: every request body and query is loaded through
one, every answer dumped through one; the OpenAPI document is generated from them.

- `common`: the strict base schema, field types, validators and their JSON Schema patterns
- `errors`: the error answer; `pagination`: the page query and list shape
- `auth`, `users`, `streams`, `channel` (stream key and settings), `categories`, `statistics`,
  `chat_moderation` (moderators, bans, chat settings, the moderation log), `webhooks`,
  `push` (Web Push key and subscriptions)
- `dump`: the compiled answer dumpers

The names below are the package's interface; `DOCUMENTED` lists the schemas the OpenAPI
document carries as components (docstrings refer to them by class name).
"""

from __future__ import annotations

from marshmallow import Schema

from sf.schemas.auth import (
    LoginSchema,
    MailTokenSchema,
    PasswordResetConfirmSchema,
    PasswordResetRequestSchema,
    RefreshSchema,
    RegisterSchema,
    TokenPairSchema,
    WsTicketSchema,
)
from sf.schemas.categories import CategoryListSchema, CategorySchema, category_schema
from sf.schemas.channel import StreamKeySchema, StreamSettingsSchema
from sf.schemas.chat import (
    ChatAuthorSchema,
    ChatMessageListSchema,
    ChatMessageSchema,
)
from sf.schemas.chat_moderation import (
    BanListSchema,
    BanRequestSchema,
    BanSchema,
    ChannelPageQuerySchema,
    ChannelQuerySchema,
    ChatSettingsSchema,
    ModerationLogEntrySchema,
    ModerationLogSchema,
)
from sf.schemas.common import StrictSchema
from sf.schemas.errors import ErrorBodySchema, ErrorSchema, flatten_messages
from sf.schemas.exports import (
    ExportCreatedSchema,
    ExportDownloadQuerySchema,
    ExportListSchema,
    ExportSchema,
    export_created,
    export_download_query,
    export_schema,
)
from sf.schemas.notifications import (
    MarkReadSchema,
    NotificationListQuerySchema,
    NotificationListSchema,
    NotificationSchema,
    NotificationSettingsSchema,
    UnsubscribeQuerySchema,
    UnsubscribeSchema,
)
from sf.schemas.pagination import PageQuerySchema, PaginationSchema, page, page_query
from sf.schemas.push import (
    PushKeySchema,
    PushKeysSchema,
    PushSubscriptionCreatedSchema,
    PushSubscriptionListSchema,
    PushSubscriptionRequestSchema,
    PushSubscriptionSchema,
)
from sf.schemas.statistics import (
    StatisticsQuerySchema,
    StreamStatisticsSchema,
    UserStatisticsSchema,
    ViewerSampleSchema,
)
from sf.schemas.streams import (
    CategoryStreamListQuerySchema,
    StreamCreateSchema,
    StreamListQuerySchema,
    StreamListSchema,
    StreamSchema,
    StreamUpdateSchema,
    category_stream_list_query,
    stream_list_query,
)
from sf.schemas.users import (
    ChangePasswordSchema,
    ConsentSchema,
    DeleteAccountSchema,
    ErasureScheduledSchema,
    PrivacyPolicySchema,
    ProfileUpdateSchema,
    UserListSchema,
    UserPrivateSchema,
    UserPublicSchema,
    erasure_scheduled,
    user_private,
    user_public,
)
from sf.schemas.webhooks import (
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookDeliveryListSchema,
    WebhookDeliverySchema,
    WebhookListSchema,
    WebhookSchema,
    WebhookUpdateSchema,
    webhook_create,
    webhook_created,
    webhook_delivery,
    webhook_schema,
)

DOCUMENTED: tuple[type[Schema], ...] = (
    CategoryListSchema, CategorySchema, CategoryStreamListQuerySchema, ChangePasswordSchema,
    ChatAuthorSchema, ChatMessageListSchema, ChatMessageSchema,
    ConsentSchema, DeleteAccountSchema, ErasureScheduledSchema, ErrorBodySchema, ErrorSchema,
    ExportCreatedSchema, ExportDownloadQuerySchema, ExportListSchema, ExportSchema, LoginSchema,
    MailTokenSchema, PageQuerySchema, PasswordResetConfirmSchema, PasswordResetRequestSchema,
    PaginationSchema, PrivacyPolicySchema, ProfileUpdateSchema,
    RefreshSchema, RegisterSchema, StatisticsQuerySchema, StreamCreateSchema, StreamKeySchema,
    StreamListQuerySchema, StreamListSchema, StreamSchema, StreamSettingsSchema, StreamStatisticsSchema,
    StreamUpdateSchema, TokenPairSchema, UserListSchema, UserPrivateSchema, UserPublicSchema,
    UserStatisticsSchema, ViewerSampleSchema, WsTicketSchema,
    # chat moderation
    BanListSchema, BanRequestSchema, BanSchema, ChannelPageQuerySchema, ChannelQuerySchema,
    ChatSettingsSchema, ModerationLogEntrySchema, ModerationLogSchema,
    # notifications
    MarkReadSchema, NotificationListQuerySchema, NotificationListSchema, NotificationSchema,
    NotificationSettingsSchema, UnsubscribeQuerySchema, UnsubscribeSchema,
    # webhooks
    WebhookCreatedSchema, WebhookCreateSchema, WebhookDeliveryListSchema, WebhookDeliverySchema,
    WebhookListSchema, WebhookSchema, WebhookUpdateSchema,
    # Web Push
    PushKeySchema, PushKeysSchema, PushSubscriptionCreatedSchema, PushSubscriptionListSchema,
    PushSubscriptionRequestSchema, PushSubscriptionSchema,
)

__all__ = [
    "DOCUMENTED", "ChangePasswordSchema", "ChatAuthorSchema", "ChatMessageListSchema",
    "ChatMessageSchema", "ChatSettingsSchema", "CategoryListSchema", "CategorySchema", "ConsentSchema",
    "CategoryStreamListQuerySchema", "ErrorBodySchema", "ErrorSchema", "ExportCreatedSchema",
    "ExportDownloadQuerySchema", "ExportListSchema", "ExportSchema", "LoginSchema",
    "MailTokenSchema", "PageQuerySchema", "PasswordResetConfirmSchema", "PasswordResetRequestSchema",
    "PaginationSchema", "PrivacyPolicySchema", "ProfileUpdateSchema", "RefreshSchema", "RegisterSchema",
    "DeleteAccountSchema", "ErasureScheduledSchema", "erasure_scheduled",
    "StatisticsQuerySchema", "StreamCreateSchema", "StreamKeySchema", "StreamListQuerySchema",
    "StreamListSchema", "StreamSchema", "StreamSettingsSchema", "StreamStatisticsSchema",
    "StreamUpdateSchema", "StrictSchema", "TokenPairSchema", "UserListSchema", "UserPrivateSchema",
    "UserPublicSchema", "UserStatisticsSchema", "ViewerSampleSchema", "WsTicketSchema",
    "category_schema", "category_stream_list_query", "export_created", "export_download_query",
    "export_schema", "flatten_messages", "page", "page_query",
    "stream_list_query", "user_private", "user_public",
    "BanListSchema", "BanRequestSchema", "BanSchema", "ChannelPageQuerySchema",
    "ChannelQuerySchema", "ChatSettingsSchema", "ModerationLogEntrySchema", "ModerationLogSchema",
    "MarkReadSchema", "NotificationListQuerySchema", "NotificationListSchema", "NotificationSchema",
    "NotificationSettingsSchema", "UnsubscribeQuerySchema", "UnsubscribeSchema",
    "WebhookCreatedSchema", "WebhookCreateSchema", "WebhookDeliveryListSchema",
    "WebhookDeliverySchema", "WebhookListSchema", "WebhookSchema", "WebhookUpdateSchema",
    "webhook_create", "webhook_created", "webhook_delivery", "webhook_schema",
    "PushKeySchema", "PushKeysSchema", "PushSubscriptionCreatedSchema",
    "PushSubscriptionListSchema", "PushSubscriptionRequestSchema", "PushSubscriptionSchema",
]
