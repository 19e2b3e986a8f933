"""Webhooks (API.md "Notifications and webhooks"): the caller's webhooks, their deliveries,
and redelivering one. Another user's webhook is "not found", never "forbidden"."""

from __future__ import annotations

from sf.handlers.base import APIHandler
from sf.schemas import (
    WebhookUpdateSchema,
    page,
    page_query,
    webhook_create,
    webhook_created,
    webhook_delivery,
    webhook_schema,
)

WEBHOOK_ID = r"(?P<webhook_id>\d{1,18})"
DELIVERY_ID = r"(?P<delivery_id>\d{1,18})"


class WebhooksHandler(APIHandler):
    auth = "required"

    async def get(self) -> None:
        """Your webhooks, oldest first (never their secrets).
        ---
        summary: List your webhooks
        tags: [webhooks]
        security: [{bearer: []}]
        responses:
          200: {description: Your webhooks, content: {application/json: {schema: WebhookListSchema}}}
        """
        webhooks = await self.services.webhooks.list_for(self.user_id)
        self.set_header("Cache-Control", "no-store")
        self.write_json({"data": webhook_schema.dump(webhooks, many=True)})

    async def post(self) -> None:
        """Make a webhook for events of your channel; the answer holds its signing secret,
        shown this once.
        ---
        summary: Create a webhook
        tags: [webhooks]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: WebhookCreateSchema}}}
        responses:
          201: {description: Made, with its secret, content: {application/json: {schema: WebhookCreatedSchema}}}
          409: {description: You have SF_WEBHOOKS_PER_USER webhooks already, content: {application/json: {schema: ErrorSchema}}}
          422: {description: A URL SF does not send to (not https, a private address, or a name resolving to one) or an unknown event, content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(webhook_create)
        webhook, secret = await self.services.webhooks.create(self.user_id, body["url"],
                                                              body["events"])
        self.set_header("Cache-Control", "no-store")
        self.write_json({**webhook_created.dump(webhook), "secret": secret}, 201)


class WebhookHandler(APIHandler):
    auth = "required"

    async def get(self, webhook_id: str) -> None:
        """One of your webhooks.
        ---
        summary: Get a webhook
        tags: [webhooks]
        security: [{bearer: []}]
        responses:
          200: {description: The webhook, content: {application/json: {schema: WebhookSchema}}}
          404: {description: No webhook of yours has this id, content: {application/json: {schema: ErrorSchema}}}
        """
        webhook = await self.services.webhooks.get(self.user_id, int(webhook_id))
        self.write_json(webhook_schema.dump(webhook))

    async def put(self, webhook_id: str) -> None:
        """Change a webhook's url or events, or enable (its failures forgotten) or disable it.
        ---
        summary: Update a webhook
        tags: [webhooks]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: WebhookUpdateSchema}}}
        responses:
          200: {description: The webhook, content: {application/json: {schema: WebhookSchema}}}
          404: {description: No webhook of yours has this id, content: {application/json: {schema: ErrorSchema}}}
          422: {description: A URL SF does not send to or an unknown event, content: {application/json: {schema: ErrorSchema}}}
        """
        changes = self.parse_json(WebhookUpdateSchema())
        webhook = await self.services.webhooks.update(self.user_id, int(webhook_id), changes)
        self.write_json(webhook_schema.dump(webhook))

    async def delete(self, webhook_id: str) -> None:
        """Delete a webhook and its deliveries.
        ---
        summary: Delete a webhook
        tags: [webhooks]
        security: [{bearer: []}]
        responses:
          204: {description: Deleted}
          404: {description: No webhook of yours has this id, content: {application/json: {schema: ErrorSchema}}}
        """
        await self.services.webhooks.delete(self.user_id, int(webhook_id))
        self.set_status(204)
        self.finish()


class WebhookDeliveriesHandler(APIHandler):
    auth = "required"

    async def get(self, webhook_id: str) -> None:
        """A webhook's deliveries, newest first.
        ---
        summary: List a webhook's deliveries
        tags: [webhooks]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of deliveries, content: {application/json: {schema: WebhookDeliveryListSchema}}}
          404: {description: No webhook of yours has this id, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Bad limit or cursor, content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(page_query)
        deliveries, cursor = await self.services.webhooks.deliveries(
            self.user_id, int(webhook_id), query["limit"], query["cursor"])
        self.set_header("Cache-Control", "no-store")
        self.write_json(page(deliveries, cursor, webhook_delivery))


class WebhookRedeliverHandler(APIHandler):
    auth = "required"

    async def post(self, webhook_id: str, delivery_id: str) -> None:
        """Send a delivery again (same event id and body), due now.
        ---
        summary: Redeliver
        tags: [webhooks]
        security: [{bearer: []}]
        responses:
          202: {description: Queued again, content: {application/json: {schema: WebhookDeliverySchema}}}
          404: {description: No delivery of a webhook of yours has these ids, content: {application/json: {schema: ErrorSchema}}}
          409: {description: The webhook is disabled or the delivery is being sent, content: {application/json: {schema: ErrorSchema}}}
        """
        delivery = await self.services.webhooks.redeliver(self.user_id, int(webhook_id),
                                                          int(delivery_id))
        self.write_json(webhook_delivery.dump(delivery), 202)


routes = [
    (r"/api/webhooks", WebhooksHandler),
    (rf"/api/webhooks/{WEBHOOK_ID}", WebhookHandler),
    (rf"/api/webhooks/{WEBHOOK_ID}/deliveries", WebhookDeliveriesHandler),
    (rf"/api/webhooks/{WEBHOOK_ID}/deliveries/{DELIVERY_ID}/redeliver", WebhookRedeliverHandler),
]
