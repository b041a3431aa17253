-- Loyalty signals. signals_current: one row per customer, the highest version (events applied)
-- wins. signals_history: every version of every customer, for trends; a replayed version
-- collapses onto the same (customer_id, version) key.
CREATE TABLE IF NOT EXISTS {db}.signals_current
(
    customer_id                String,
    version                    UInt64,
    as_of                      DateTime64(3, 'UTC'),
    model_version              LowCardinality(String),
    loyalty_score              Float64,
    tier                       LowCardinality(String),
    tier_reason                String,
    component_recency              Float64,
    component_frequency            Float64,
    component_monetary             Float64,
    component_breadth              Float64,
    component_relationship_quality Float64,
    component_price_independence   Float64,
    component_recognition          Float64,
    churn_risk                 Float64,
    horizon_days               UInt16,
    p_alive                    Nullable(Float64),
    expected_purchases         Float64,
    expected_next_purchase_at  Nullable(DateTime64(3, 'UTC')),
    days_since_last_purchase   Nullable(Float64),
    purchase_gap_days          Float64,
    purchase_gap_source        LowCardinality(String),
    purchases                  UInt64,
    spend_365d_minor           Int64,
    last_purchase_at           Nullable(DateTime64(3, 'UTC')),
    last_purchase_categories   Array(String),
    last_purchase_skus         Array(String),
    last_purchase_channel      Nullable(String),
    last_purchase_location_id  Nullable(String),
    favourite_category         Nullable(String),
    preferred_channel          Nullable(String),
    open_issues                UInt32,
    greeting_hint              String,
    params_source              LowCardinality(String),
    updated_at                 DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.signals_history
(
    customer_id                String,
    version                    UInt64,
    as_of                      DateTime64(3, 'UTC'),
    model_version              LowCardinality(String),
    loyalty_score              Float64,
    tier                       LowCardinality(String),
    tier_reason                String,
    component_recency              Float64,
    component_frequency            Float64,
    component_monetary             Float64,
    component_breadth              Float64,
    component_relationship_quality Float64,
    component_price_independence   Float64,
    component_recognition          Float64,
    churn_risk                 Float64,
    horizon_days               UInt16,
    p_alive                    Nullable(Float64),
    expected_purchases         Float64,
    expected_next_purchase_at  Nullable(DateTime64(3, 'UTC')),
    days_since_last_purchase   Nullable(Float64),
    purchase_gap_days          Float64,
    purchase_gap_source        LowCardinality(String),
    purchases                  UInt64,
    spend_365d_minor           Int64,
    last_purchase_at           Nullable(DateTime64(3, 'UTC')),
    last_purchase_categories   Array(String),
    last_purchase_skus         Array(String),
    last_purchase_channel      Nullable(String),
    last_purchase_location_id  Nullable(String),
    favourite_category         Nullable(String),
    preferred_channel          Nullable(String),
    open_issues                UInt32,
    greeting_hint              String,
    params_source              LowCardinality(String),
    updated_at                 DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (customer_id, version)
SETTINGS non_replicated_deduplication_window = 10000;

-- BG/NBD population parameters, one row per refit; the worker uses the newest.
CREATE TABLE IF NOT EXISTS {db}.model_params
(
    fitted_at            DateTime64(3, 'UTC'),
    model_version        LowCardinality(String),
    source               LowCardinality(String),
    r                    Float64,
    alpha                Float64,
    a                    Float64,
    b                    Float64,
    buyers               UInt64,
    log_likelihood       Nullable(Float64),
    population_gap_days  Float64
)
ENGINE = MergeTree
ORDER BY fitted_at;
