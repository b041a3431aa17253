-- The churn risk says which model gave it (learned, or the bgnbd fallback) and which inputs moved
-- it most: the drivers as two parallel arrays (input name, signed contribution to the log-odds of
-- no purchase, relative to the training population's mean), largest first.
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS churn_model LowCardinality(String) DEFAULT 'bgnbd' AFTER params_source;
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS churn_driver_features Array(String) AFTER churn_model;
ALTER TABLE {db}.signals_current ADD COLUMN IF NOT EXISTS churn_driver_contributions Array(Float64) AFTER churn_driver_features;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS churn_model LowCardinality(String) DEFAULT 'bgnbd' AFTER params_source;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS churn_driver_features Array(String) AFTER churn_model;
ALTER TABLE {db}.signals_history ADD COLUMN IF NOT EXISTS churn_driver_contributions Array(Float64) AFTER churn_driver_features;
