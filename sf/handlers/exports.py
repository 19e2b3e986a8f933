"""Personal data exports (API.md "Account lifecycle and personal data"): request, list, and
the owner's signed download."""

from __future__ import annotations

import contextlib

from sf.handlers.base import APIHandler
from sf.schemas import export_created, export_download_query, export_schema, page, page_query


class ExportsHandler(APIHandler):
    auth = "required"

    async def post(self) -> None:
        """Request a ZIP of your data (profile, consents, streams with statistics, follows both
        ways, invites both ways, sign-ins, the avatar), built in the background.
        ---
        summary: Request a data export
        tags: [users]
        security: [{bearer: []}]
        responses:
          202: {description: Requested; list the exports to see when it is ready, content: {application/json: {schema: ExportCreatedSchema}}}
          409: {description: An export of yours is still being prepared, content: {application/json: {schema: ErrorSchema}}}
          429: {description: Too many exports requested in the last 24 hours (SF_EXPORTS_PER_DAY), content: {application/json: {schema: ErrorSchema}}}
        """
        export = await self.services.exports.request(self.user_id)
        self.write_json(export_created.dump(export), 202)

    async def get(self) -> None:
        """Your exports, newest first, each with its signed download link once ready.
        ---
        summary: List your data exports
        tags: [users]
        security: [{bearer: []}]
        parameters:
          - {in: query, schema: PageQuerySchema}
        responses:
          200: {description: A page of exports, content: {application/json: {schema: ExportListSchema}}}
        """
        query = self.parse_query(page_query)
        exports, cursor = await self.services.exports.list_exports(self.user_id, query["limit"],
                                                                   query["cursor"])
        self.set_header("Cache-Control", "no-store")
        self.write_json(page(exports, cursor, export_schema))


class ExportDownloadHandler(APIHandler):
    # The signed link is the credential (a browser following it sends no Bearer token); only
    # the owner is given it, in their export list.
    auth = "public"

    async def get(self, export_id: str) -> None:
        """Download a ready export through the signed link from the export list.
        ---
        summary: Download a data export
        tags: [users]
        parameters:
          - {in: path, name: export_id, required: true, schema: {type: integer}}
          - {in: query, schema: ExportDownloadQuerySchema}
        responses:
          200: {description: The ZIP archive, content: {application/zip: {schema: {type: string, format: binary}}}}
          403: {description: The link has expired, content: {application/json: {schema: ErrorSchema}}}
          404: {description: "No such export: unknown, not ready, deleted, or the signature does not match", content: {application/json: {schema: ErrorSchema}}}
        """
        query = self.parse_query(export_download_query)
        exports = self.services.exports
        download = await exports.open_download(int(export_id), query["expires"],
                                               query["signature"])
        self.set_header("Content-Type", "application/zip")
        self.set_header("Content-Disposition", f'attachment; filename="{download.filename}"')
        self.set_header("Content-Length", str(download.size))
        self.set_header("Cache-Control", "no-store, private")
        async with contextlib.aclosing(exports.read_chunks(download.path)) as chunks:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        self.finish()


routes = [
    (r"/api/users/profile/exports", ExportsHandler),
    (r"/api/users/profile/exports/(?P<export_id>[0-9]+)/download", ExportDownloadHandler),
]
