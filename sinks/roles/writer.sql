-- The worker's role for a ClickHouse SERVER (chDB has no access control). Apply as an
-- administrator after `loyalty init`, with {db} replaced by the database, e.g.
--   sed 's/{db}/loyalty/g' sinks/roles/writer.sql | clickhouse-client --multiquery
-- Idempotent. Then: GRANT loyalty_writer TO worker.

-- loyalty_writer: what the worker needs against a server once an administrator has run
-- `loyalty init`: INSERT into the tables it writes, and SELECT of the few columns it reads
-- back (the applied migration versions, the model parameters, the refit's purchase rhythm).
-- No SELECT of contact pseudonyms; of the raw interactions only the columns the churn refit
-- reads. The materialized views of 0004, 0011 and 0012 run with
-- their definer's rights, so INSERT into signals_current fills signals_history, and that
-- customer_week_tiers, without a grant on them (INSERT on signals_history
-- stays for sinks older than 0011), and INSERT into signals_avro (0012) fills signals_current,
-- tier_days and relationships (INSERT on those stays: signals of older writer schemas, and a
-- batch ClickHouse refuses in Avro, are inserted there directly).
CREATE ROLE IF NOT EXISTS loyalty_writer;
GRANT INSERT ON {db}.purchases TO loyalty_writer;
GRANT INSERT ON {db}.calls TO loyalty_writer;
GRANT INSERT ON {db}.visits TO loyalty_writer;
GRANT INSERT ON {db}.relationships TO loyalty_writer;
GRANT INSERT ON {db}.dead_letters TO loyalty_writer;
GRANT INSERT ON {db}.signals_current TO loyalty_writer;
GRANT INSERT ON {db}.signals_history TO loyalty_writer;
GRANT INSERT ON {db}.tier_days TO loyalty_writer;
GRANT INSERT ON {db}.signals_avro TO loyalty_writer;
GRANT INSERT ON {db}.alerts TO loyalty_writer;
GRANT INSERT, SELECT ON {db}.model_params TO loyalty_writer;
-- The interval of the refreshed tier mix (0013), set at every sink start.
GRANT ALTER VIEW MODIFY REFRESH ON {db}.tiers_now_mv TO loyalty_writer;
-- migrate() at worker start: its idempotent preamble, then the list of applied versions.
GRANT CREATE DATABASE ON {db}.* TO loyalty_writer;
GRANT CREATE TABLE ON {db}.schema_migrations TO loyalty_writer;
GRANT SELECT(version) ON {db}.schema_migrations TO loyalty_writer;
-- The churn model's refit (streams/churn_params.py) reads a sample of the raw interactions back,
-- without contact pseudonyms or items.
GRANT SELECT(event_id, customer_id, occurred_at, channel, order_id, amount_minor, currency, discount_minor,
             promo_code, is_return, location_id) ON {db}.purchases TO loyalty_writer;
GRANT SELECT(event_id, customer_id, occurred_at, direction, reason, wait_seconds, duration_seconds, resolved,
             sentiment, effort_score, nps, agent_id) ON {db}.calls TO loyalty_writer;
GRANT SELECT(event_id, customer_id, occurred_at, channel, location_id, duration_seconds, recognized)
    ON {db}.visits TO loyalty_writer;
-- The BG/NBD refit (streams/params.py) counts purchase days in the purchases columns above and
-- reads the customers' mean gaps from the relationships.
GRANT SELECT(customer_id, version, purchases_lifetime, first_purchase_at, last_purchase_at, mean_gap_days)
    ON {db}.relationships TO loyalty_writer;
