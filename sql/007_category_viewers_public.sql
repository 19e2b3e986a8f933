-- A category's viewers_count counts public live streams only: a private stream's audience (or
-- its being live at all) must not show through the category it is in.
CREATE OR REPLACE FUNCTION refresh_category_viewers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    affected bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        affected := ARRAY[OLD.category_id];
    ELSIF TG_OP = 'INSERT' THEN
        affected := ARRAY[NEW.category_id];
    ELSE
        affected := ARRAY[OLD.category_id, NEW.category_id];
    END IF;
    UPDATE categories c
       SET viewers_count = COALESCE((SELECT sum(s.viewers_count) FROM streams s
                                     WHERE s.category_id = c.id AND s.is_live
                                       AND NOT s.is_private), 0)
     WHERE c.id = ANY (affected);
    RETURN NULL;
END $$;

DROP TRIGGER streams_category_viewers ON streams;
CREATE TRIGGER streams_category_viewers
AFTER INSERT OR DELETE OR UPDATE OF is_live, viewers_count, category_id, is_private ON streams
FOR EACH ROW EXECUTE FUNCTION refresh_category_viewers();

UPDATE categories c
   SET viewers_count = COALESCE((SELECT sum(s.viewers_count) FROM streams s
                                 WHERE s.category_id = c.id AND s.is_live
                                   AND NOT s.is_private), 0);
