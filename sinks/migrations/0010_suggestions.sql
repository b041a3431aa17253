-- Next-best categories of the know-me profile (domain/model/suggest.py): up to three per signal,
-- best first, as parallel arrays (category, the reason shown to staff, score 0-1). Rows written
-- before this migration read empty arrays.
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS suggested_categories Array(String) AFTER greeting_hint;
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS suggestion_reasons Array(String) AFTER suggested_categories;
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS suggestion_scores Array(Float64) AFTER suggestion_reasons;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS suggested_categories Array(String) AFTER greeting_hint;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS suggestion_reasons Array(String) AFTER suggested_categories;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS suggestion_scores Array(Float64) AFTER suggestion_reasons;
