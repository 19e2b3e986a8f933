"""Web Push (API.md "Notifications and webhooks"): the VAPID public key browsers subscribe
with, and the caller's push subscriptions."""

from __future__ import annotations

from sf.handlers.base import APIHandler
from sf.schemas import PushSubscriptionRequestSchema, page
from sf.schemas.push import push_key, push_subscription, push_subscription_created

SUBSCRIPTION_ID = r"(?P<subscription_id>\d{1,18})"


class PushKeyHandler(APIHandler):
    # A public key: a page may fetch it before asking the user for permission.
    auth = "public"

    async def get(self) -> None:
        """The server's VAPID public key, for `pushManager.subscribe({applicationServerKey})`.
        ---
        summary: Web Push public key
        tags: [notifications]
        responses:
          200: {description: The key, content: {application/json: {schema: PushKeySchema}}}
        """
        self.set_header("Cache-Control", "public, max-age=3600")
        self.write_json(push_key.dump({"public_key": self.services.push.public_key}))


class PushSubscriptionsHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Subscribe this browser: the body is its `PushSubscription.toJSON()`. The same
        endpoint again answers 200 with the id it has (its keys updated); an endpoint another
        account had moves to this one (a browser gets one account's pushes). An account keeps
        its 10 newest subscriptions.
        ---
        summary: Subscribe to Web Push
        tags: [notifications]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: PushSubscriptionRequestSchema}}}
        responses:
          200: {description: Already subscribed, content: {application/json: {schema: PushSubscriptionCreatedSchema}}}
          201: {description: Subscribed, content: {application/json: {schema: PushSubscriptionCreatedSchema}}}
          422: {description: "Invalid keys, or an endpoint SF does not send to (not https, or a private, loopback or link-local address)", content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(PushSubscriptionRequestSchema())
        stored = await self.services.push_subscriptions.subscribe(
            self.user_id, body["endpoint"], body["keys"]["p256dh"], body["keys"]["auth"],
            body["expirationTime"])
        self.write_json(push_subscription_created.dump(stored), 201 if stored.created else 200)

    async def get(self) -> None:
        """Your push subscriptions, newest first: where each points (the push service's
        origin), never the endpoint itself.
        ---
        summary: List your Web Push subscriptions
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          200: {description: Every subscription (at most 10; never a next page), content: {application/json: {schema: PushSubscriptionListSchema}}}
        """
        subscriptions = await self.services.push_subscriptions.list(self.user_id)
        self.set_header("Cache-Control", "no-store")
        self.write_json(page(subscriptions, None, push_subscription))


class PushSubscriptionHandler(APIHandler):
    auth = "required"

    async def delete(self, subscription_id: str) -> None:
        """Unsubscribe (call it before `PushSubscription.unsubscribe()` and before signing
        out). Another account's id is a 404, like an unknown one.
        ---
        summary: Delete a Web Push subscription
        tags: [notifications]
        security: [{bearer: []}]
        responses:
          204: {description: Deleted}
          404: {description: No such subscription of yours, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.push_subscriptions.unsubscribe(self.user_id, int(subscription_id))
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/notifications/push/key", PushKeyHandler),
    (r"/api/notifications/push/subscriptions", PushSubscriptionsHandler),
    (rf"/api/notifications/push/subscriptions/{SUBSCRIPTION_ID}", PushSubscriptionHandler),
]
