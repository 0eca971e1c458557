-- Turn-taking for several batches in flight (UPLOAD_BATCHES_IN_FLIGHT > 1). A batch sent after another on a
-- different connection can reach the server first; checked at once against the chain row (0003) it would find
-- the batch before it not in yet and insert nothing (a chain break: the drain waits for every batch in flight
-- and sends them again one by one). Instead its statement calls sync_upload_turn, which waits for its turn:
--   * it marks itself in flight with a shared transaction-level advisory lock keyed by site and batch
--     (released when its statement commits or rolls back; nothing outlives the transaction, so a pooler in
--     transaction mode may hand every statement to another server connection);
--   * it moves the site's head from the batch before it to itself, as soon as that batch has committed;
--   * while that batch is in flight (its key is held), it waits for the key exclusively: woken when that batch
--     commits or rolls back, it tries again;
--   * while that batch is neither in nor in flight (not arrived yet), it looks again every millisecond, for at
--     most p_wait_ms, then gives up (false: the statement inserts nothing, and the drain sends the batch
--     again), so a batch before it that failed holds it back only that long.
-- No row lock is held while waiting (the head row is updated only when it names the batch before), and a
-- batch never blocks on its own key, so the batch before is never held up by the one after it. Citus: the
-- function runs on the coordinator; its queries on sync_upload_chain route by source_id (distributed) or go
-- to the reference table.
CREATE OR REPLACE FUNCTION sync_upload_turn(p_source text, p_batch uuid, p_after uuid, p_wait_ms integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
  before_key CONSTANT bigint := hashtextextended(p_source || ' ' || p_after::text, 1953854062);
  deadline CONSTANT timestamptz := clock_timestamp() + p_wait_ms * interval '1 millisecond';
BEGIN
  -- In flight: shared, and only if free (a batch after this one that arrived first may hold it exclusively;
  -- then this one goes unmarked and that one looks again every millisecond).
  PERFORM pg_try_advisory_xact_lock_shared(hashtextextended(p_source || ' ' || p_batch::text, 1953854062));
  LOOP
    UPDATE sync_upload_chain SET head = p_batch, updated_at = now()
    WHERE source_id = p_source AND head = p_after;
    IF FOUND THEN
      RETURN true;
    END IF;
    IF NOT pg_try_advisory_xact_lock(before_key) THEN
      -- The batch before is in flight: wait until it commits or rolls back (then hold its key, which nothing
      -- asks for again: a batch sent again goes as the head, without a turn lock).
      PERFORM pg_advisory_xact_lock(before_key);
    ELSIF clock_timestamp() >= deadline THEN
      RETURN false;
    ELSE
      PERFORM pg_sleep(0.001);
    END IF;
  END LOOP;
END
$fn$;
