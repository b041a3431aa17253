-- 0012_signals_avro: the sink hands the signals to ClickHouse as they travel, in Avro, instead of
-- decoding them in Python.
--
-- signals_avro is shaped like schemas/loyalty_signal.avsc (one column per field, the records as
-- tuples, the unions with null as Nullable) plus updated_at, the sink's time of the batch, and
-- record_end, a fixed number after each record (a container has no per-record lengths). It
-- has the Null engine: it keeps nothing, and its rows only feed the three views below, which
-- fill signals_current (and through signals_history_mv, signals_history), tier_days and
-- relationships with the same values the sink's Python path builds (sinks/rows.py:
-- signal_values, tier_day_values and the relationship facts), tests/unit/test_sink_avro.py
-- compares the two row by row. A signal without facts (written before signals carried them)
-- has nothing to version it by and is left out, as there.
--
-- The sink inserts one Avro object container per batch (streams/sink.py, sinks/avro.py): the
-- bodies of the records written with the current schema, each followed by updated_at and that
-- number, behind one header whose schema is loyalty_signal.avsc plus those two fields. Records of
-- an older writer schema, or with a wrong header, take the Python path; a container ClickHouse
-- refuses (a corrupt record) is written by the Python path instead, which skips the bad record. A field added to loyalty_signal.avsc without a column here is read by
-- the Python path only (ClickHouse skips the container's fields the table lacks); the new column
-- and the views that read it come in the migration that goes with the schema change.
--
-- Exactly once: the insert carries the batch's deduplication token and
-- deduplicate_blocks_in_dependent_materialized_views = 1, so each view's block is deduplicated by
-- a token derived from it (the Null table itself deduplicates nothing and passes every retried
-- block on): a retried batch writes nothing twice (tests/unit/test_sink_avro.py). A replay in
-- other batch boundaries collapses on the ReplacingMergeTree keys as before.
CREATE TABLE IF NOT EXISTS {db}.signals_avro
(
    customer_id                String,
    as_of                      DateTime64(3, 'UTC'),
    model_version              String,
    loyalty_score              Float64,
    tier                       String,
    tier_reason                String,
    components                 Map(String, Float64),
    churn_risk                 Float64,
    horizon_days               Int32,
    p_alive                    Nullable(Float64),
    expected_purchases         Float64,
    expected_next_purchase_at  Nullable(DateTime64(3, 'UTC')),
    days_since_last_purchase   Nullable(Float64),
    purchase_gap_days          Float64,
    purchase_gap_source        String,
    purchases                  Int64,
    last_purchase_at           Nullable(DateTime64(3, 'UTC')),
    last_purchase_categories   Array(String),
    last_purchase_skus         Array(String),
    last_purchase_channel      Nullable(String),
    last_purchase_location_id  Nullable(String),
    favourite_category         Nullable(String),
    preferred_channel          Nullable(String),
    open_issues                Int32,
    greeting_hint              String,
    params_source              String,
    churn_model                String,
    churn_drivers              Array(Tuple(feature String, contribution Float64)),
    suggested_categories       Array(Tuple(category String, reason String, score Float64)),
    relationship               Nullable(Tuple(
        version Int64,
        events Int64,
        first_seen_at Nullable(DateTime64(3, 'UTC')),
        last_seen_at Nullable(DateTime64(3, 'UTC')),
        first_purchase_at Nullable(DateTime64(3, 'UTC')),
        purchases_lifetime Int64,
        spend_lifetime_minor Int64,
        discounted_purchases_lifetime Int64,
        discounted_spend_lifetime_minor Int64,
        returns_lifetime Int64,
        refund_lifetime_minor Int64,
        calls_lifetime Int64,
        complaints_lifetime Int64,
        unresolved_calls_lifetime Int64,
        visits_lifetime Int64,
        recognized_visits_lifetime Int64,
        purchases_7d Int64,
        spend_7d_minor Int64,
        discounted_spend_7d_minor Int64,
        purchases_30d Int64,
        spend_30d_minor Int64,
        discounted_spend_30d_minor Int64,
        calls_30d Int64,
        complaints_30d Int64,
        unresolved_calls_30d Int64,
        avg_sentiment_30d Nullable(Float64),
        avg_effort_30d Nullable(Float64),
        visits_30d Int64,
        recognized_share_30d Nullable(Float64),
        purchases_90d Int64,
        spend_90d_minor Int64,
        discounted_spend_90d_minor Int64,
        calls_90d Int64,
        complaints_90d Int64,
        unresolved_calls_90d Int64,
        avg_sentiment_90d Nullable(Float64),
        avg_effort_90d Nullable(Float64),
        visits_90d Int64,
        recognized_share_90d Nullable(Float64),
        purchases_365d Int64,
        spend_365d_minor Int64,
        discounted_spend_365d_minor Int64,
        mean_gap_days Nullable(Float64),
        gap_stddev_days Nullable(Float64),
        last_purchase_at Nullable(DateTime64(3, 'UTC')),
        last_purchase_channel Nullable(String),
        last_purchase_location_id Nullable(String),
        last_purchase_amount_minor Nullable(Int64),
        last_purchase_categories Array(String),
        preferred_channel Nullable(String),
        favourite_category Nullable(String),
        channels Array(String)
    )),
    day_ends                   Array(Tuple(day Date32, as_of DateTime64(3, 'UTC'), version Int64, tier String, loyalty_score Float64, churn_risk Float64, spend_365d_minor Int64)),
    updated_at                 DateTime64(3, 'UTC'),
    record_end                 Int64,
    -- each datum is followed by updated_at and this number (sinks/avro.py's RECORD_END, the bytes
    -- of '#signal#'): a datum misread (a corrupt length, a byte too many or too few) reads
    -- something else here, and the whole insert is refused
    CONSTRAINT record_framed CHECK record_end = 2554501306603629603
)
ENGINE = Null;

-- signals_current, column for column as sinks/rows.py's signal_values: the version and the
-- trailing-year spend are the relationship facts'
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_avro_current_mv TO {db}.signals_current AS
SELECT
    s.customer_id AS customer_id,
    tupleElement(s.relationship, 'version') AS version,
    s.as_of AS as_of,
    s.model_version AS model_version,
    s.loyalty_score AS loyalty_score,
    s.tier AS tier,
    s.tier_reason AS tier_reason,
    s.components['recency'] AS component_recency,
    s.components['frequency'] AS component_frequency,
    s.components['monetary'] AS component_monetary,
    s.components['breadth'] AS component_breadth,
    s.components['relationship_quality'] AS component_relationship_quality,
    s.components['price_independence'] AS component_price_independence,
    s.components['recognition'] AS component_recognition,
    s.churn_risk AS churn_risk,
    s.horizon_days AS horizon_days,
    s.p_alive AS p_alive,
    s.expected_purchases AS expected_purchases,
    s.expected_next_purchase_at AS expected_next_purchase_at,
    s.days_since_last_purchase AS days_since_last_purchase,
    s.purchase_gap_days AS purchase_gap_days,
    s.purchase_gap_source AS purchase_gap_source,
    s.purchases AS purchases,
    tupleElement(s.relationship, 'spend_365d_minor') AS spend_365d_minor,
    s.last_purchase_at AS last_purchase_at,
    s.last_purchase_categories AS last_purchase_categories,
    s.last_purchase_skus AS last_purchase_skus,
    s.last_purchase_channel AS last_purchase_channel,
    s.last_purchase_location_id AS last_purchase_location_id,
    s.favourite_category AS favourite_category,
    s.preferred_channel AS preferred_channel,
    s.open_issues AS open_issues,
    s.greeting_hint AS greeting_hint,
    tupleElement(s.suggested_categories, 'category') AS suggested_categories,
    tupleElement(s.suggested_categories, 'reason') AS suggestion_reasons,
    tupleElement(s.suggested_categories, 'score') AS suggestion_scores,
    s.params_source AS params_source,
    s.churn_model AS churn_model,
    tupleElement(s.churn_drivers, 'feature') AS churn_driver_features,
    tupleElement(s.churn_drivers, 'contribution') AS churn_driver_contributions,
    s.updated_at AS updated_at
FROM {db}.signals_avro AS s
WHERE s.relationship IS NOT NULL;

-- tier_days, as sinks/rows.py's tier_day_values: each earlier event day the signal closed
-- (day_ends), then its own day, as of the signal
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_avro_tier_days_mv TO {db}.tier_days AS
SELECT
    s.customer_id AS customer_id,
    toDate(d.1) AS day,
    d.2 AS as_of,
    d.3 AS version,
    d.4 AS tier,
    d.5 AS loyalty_score,
    d.6 AS churn_risk,
    d.7 AS spend_365d_minor,
    s.updated_at AS updated_at
FROM {db}.signals_avro AS s
ARRAY JOIN arrayPushBack(
    s.day_ends,  -- (day, as_of, version, tier, loyalty_score, churn_risk, spend_365d_minor), as below
    (toDate32(s.as_of), s.as_of, assumeNotNull(tupleElement(s.relationship, 'version')), s.tier, s.loyalty_score,
     s.churn_risk, assumeNotNull(tupleElement(s.relationship, 'spend_365d_minor')))) AS d
WHERE s.relationship IS NOT NULL;

-- relationships: the facts the signal carries, as of the signal. (tupleElement rather than
-- relationship.version and the like: ClickHouse prepares each insert's views a third faster.)
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.signals_avro_relationships_mv TO {db}.relationships AS
SELECT
    tupleElement(s.relationship, 'version') AS version,
    tupleElement(s.relationship, 'events') AS events,
    tupleElement(s.relationship, 'first_seen_at') AS first_seen_at,
    tupleElement(s.relationship, 'last_seen_at') AS last_seen_at,
    tupleElement(s.relationship, 'first_purchase_at') AS first_purchase_at,
    tupleElement(s.relationship, 'purchases_lifetime') AS purchases_lifetime,
    tupleElement(s.relationship, 'spend_lifetime_minor') AS spend_lifetime_minor,
    tupleElement(s.relationship, 'discounted_purchases_lifetime') AS discounted_purchases_lifetime,
    tupleElement(s.relationship, 'discounted_spend_lifetime_minor') AS discounted_spend_lifetime_minor,
    tupleElement(s.relationship, 'returns_lifetime') AS returns_lifetime,
    tupleElement(s.relationship, 'refund_lifetime_minor') AS refund_lifetime_minor,
    tupleElement(s.relationship, 'calls_lifetime') AS calls_lifetime,
    tupleElement(s.relationship, 'complaints_lifetime') AS complaints_lifetime,
    tupleElement(s.relationship, 'unresolved_calls_lifetime') AS unresolved_calls_lifetime,
    tupleElement(s.relationship, 'visits_lifetime') AS visits_lifetime,
    tupleElement(s.relationship, 'recognized_visits_lifetime') AS recognized_visits_lifetime,
    tupleElement(s.relationship, 'purchases_7d') AS purchases_7d,
    tupleElement(s.relationship, 'spend_7d_minor') AS spend_7d_minor,
    tupleElement(s.relationship, 'discounted_spend_7d_minor') AS discounted_spend_7d_minor,
    tupleElement(s.relationship, 'purchases_30d') AS purchases_30d,
    tupleElement(s.relationship, 'spend_30d_minor') AS spend_30d_minor,
    tupleElement(s.relationship, 'discounted_spend_30d_minor') AS discounted_spend_30d_minor,
    tupleElement(s.relationship, 'calls_30d') AS calls_30d,
    tupleElement(s.relationship, 'complaints_30d') AS complaints_30d,
    tupleElement(s.relationship, 'unresolved_calls_30d') AS unresolved_calls_30d,
    tupleElement(s.relationship, 'avg_sentiment_30d') AS avg_sentiment_30d,
    tupleElement(s.relationship, 'avg_effort_30d') AS avg_effort_30d,
    tupleElement(s.relationship, 'visits_30d') AS visits_30d,
    tupleElement(s.relationship, 'recognized_share_30d') AS recognized_share_30d,
    tupleElement(s.relationship, 'purchases_90d') AS purchases_90d,
    tupleElement(s.relationship, 'spend_90d_minor') AS spend_90d_minor,
    tupleElement(s.relationship, 'discounted_spend_90d_minor') AS discounted_spend_90d_minor,
    tupleElement(s.relationship, 'calls_90d') AS calls_90d,
    tupleElement(s.relationship, 'complaints_90d') AS complaints_90d,
    tupleElement(s.relationship, 'unresolved_calls_90d') AS unresolved_calls_90d,
    tupleElement(s.relationship, 'avg_sentiment_90d') AS avg_sentiment_90d,
    tupleElement(s.relationship, 'avg_effort_90d') AS avg_effort_90d,
    tupleElement(s.relationship, 'visits_90d') AS visits_90d,
    tupleElement(s.relationship, 'recognized_share_90d') AS recognized_share_90d,
    tupleElement(s.relationship, 'purchases_365d') AS purchases_365d,
    tupleElement(s.relationship, 'spend_365d_minor') AS spend_365d_minor,
    tupleElement(s.relationship, 'discounted_spend_365d_minor') AS discounted_spend_365d_minor,
    tupleElement(s.relationship, 'mean_gap_days') AS mean_gap_days,
    tupleElement(s.relationship, 'gap_stddev_days') AS gap_stddev_days,
    tupleElement(s.relationship, 'last_purchase_at') AS last_purchase_at,
    tupleElement(s.relationship, 'last_purchase_channel') AS last_purchase_channel,
    tupleElement(s.relationship, 'last_purchase_location_id') AS last_purchase_location_id,
    tupleElement(s.relationship, 'last_purchase_amount_minor') AS last_purchase_amount_minor,
    tupleElement(s.relationship, 'last_purchase_categories') AS last_purchase_categories,
    tupleElement(s.relationship, 'preferred_channel') AS preferred_channel,
    tupleElement(s.relationship, 'favourite_category') AS favourite_category,
    tupleElement(s.relationship, 'channels') AS channels,
    s.customer_id AS customer_id,
    s.updated_at AS updated_at
FROM {db}.signals_avro AS s
WHERE s.relationship IS NOT NULL;
