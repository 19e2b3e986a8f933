-- Whether a signed-in viewer can see any private stream at all (owns one, or was invited to a
-- channel): when not, their stream lists are exactly the anonymous ones and are served from
-- the shared cache (sf/db/streams.py sees_only_public). Both lookups by index.
CREATE INDEX allowed_viewers_viewer_idx ON allowed_viewers (viewer_id);
CREATE INDEX streams_private_owner_idx ON streams (user_id) WHERE is_private;
