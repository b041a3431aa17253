-- The BI role for a ClickHouse SERVER (chDB, the embedded engine, has no access control). Apply as an
-- administrator after `loyalty init` (the views of migrations 0004, 0006 and 0007 must exist), with {db}
-- replaced by the database (LOYALTY_CLICKHOUSE_DATABASE), after every `loyalty init` that
-- applied a migration (a replaced view loses its SQL SECURITY setting), e.g.
--   sed 's/{db}/loyalty/g' sinks/roles/bi_reader.sql | clickhouse-client --multiquery
-- Idempotent: the role is created IF NOT EXISTS, grants repeat harmlessly. Then give the roles to
-- users: GRANT loyalty_bi_reader TO grafana. The worker's role is in writer.sql.
-- Statements are separated by ';' and comment lines start with '--' (like the migrations).

-- loyalty_bi_reader: reads the BI model and nothing else. Not the raw interactions, not the
-- relationship state, not signals_current, not alerts (names, contact pseudonyms, reasons).
CREATE ROLE IF NOT EXISTS loyalty_bi_reader;

-- A normal view runs with its reader's rights by default (SQL SECURITY INVOKER), which would
-- need SELECT on the tables underneath. DEFINER security runs it with the rights of the
-- administrator applying this file, so SELECT on the view is enough. A migration that replaces a
-- view (0007: v_daily_tiers, v_audience_vs_loyal) resets this: apply the file again after it.
ALTER TABLE {db}.v_daily_tiers MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_audience_vs_loyal MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_tier_transitions_weekly MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_customers_at_risk MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_alerts_outcome MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_alerts_daily MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_alerts_daily_by_origin MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_alerts_live MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_recognition_and_quality MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_tiers_current MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_score_histogram MODIFY SQL SECURITY DEFINER;
ALTER TABLE {db}.v_tiers_now MODIFY SQL SECURITY DEFINER;

GRANT SELECT ON {db}.v_daily_tiers TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_audience_vs_loyal TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_tier_transitions_weekly TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_customers_at_risk TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_alerts_outcome TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_alerts_daily TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_alerts_daily_by_origin TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_alerts_live TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_recognition_and_quality TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_tiers_current TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_score_histogram TO loyalty_bi_reader;
GRANT SELECT ON {db}.v_tiers_now TO loyalty_bi_reader;
-- signals_daily is dropped by 0014 (no view read it since 0007); its grant, where given, goes.
REVOKE SELECT ON {db}.signals_daily FROM loyalty_bi_reader;
