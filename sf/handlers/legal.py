"""The operator's privacy policy and users' acceptance of it (API.md "Account lifecycle and
personal data")."""

from __future__ import annotations

from sf.handlers.base import APIHandler
from sf.schemas import ConsentSchema, PrivacyPolicySchema


class PrivacyPolicyHandler(APIHandler):
    auth = "public"

    async def get(self) -> None:
        """The privacy policy in force: its version, since when, and its text (Markdown).
        ---
        summary: Privacy policy
        tags: [legal]
        responses:
          200: {description: The current version, content: {application/json: {schema: PrivacyPolicySchema}}}
        """
        self.set_header("Cache-Control", "public, max-age=300")
        self.write_json(PrivacyPolicySchema().dump(self.services.consents.policy))


class ConsentsHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Accept the current privacy policy (after a new version took effect); kept with the
        time, and shown in the profile as `privacy_policy_accepted`.
        ---
        summary: Accept the privacy policy
        tags: [users]
        security: [{bearer: []}]
        requestBody: {required: true, content: {application/json: {schema: ConsentSchema}}}
        responses:
          204: {description: Accepted}
          401: {description: Not authenticated, content: {application/json: {schema: ErrorSchema}}}
          422: {description: Not the current version, content: {application/json: {schema: ErrorSchema}}}
        """
        body = self.parse_json(ConsentSchema())
        await self.services.consents.accept_privacy_policy(self.user_id, body["privacy_policy"])
        self.set_status(204)
        self.finish()


routes = [
    (r"/api/legal/privacy-policy", PrivacyPolicyHandler),
    (r"/api/users/profile/consents", ConsentsHandler),
]
