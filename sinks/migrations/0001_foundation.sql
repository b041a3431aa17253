-- Raw interactions: one row per event id. ReplacingMergeTree removes a replayed or resent event
-- at merge time; BI reads use FINAL (or the *_dedup views of later migrations).
CREATE TABLE IF NOT EXISTS {db}.purchases
(
    event_id               String,
    customer_id            String,
    occurred_at            DateTime64(3, 'UTC'),
    channel                LowCardinality(String),
    order_id               String,
    amount_minor           Int64,
    currency               LowCardinality(String),
    discount_minor         Int64,
    promo_code             Nullable(String),
    item_skus              Array(String),
    item_categories        Array(String),
    item_quantities        Array(Int32),
    item_unit_prices_minor Array(Int64),
    is_return              Bool,
    location_id            Nullable(String),
    source_topic           LowCardinality(String),
    source_partition       UInt16,
    source_offset          UInt64,
    ingested_at            DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.calls
(
    event_id          String,
    customer_id       String,
    occurred_at       DateTime64(3, 'UTC'),
    direction         LowCardinality(String),
    reason            LowCardinality(String),
    wait_seconds      Int32,
    duration_seconds  Int32,
    resolved          Bool,
    sentiment         Nullable(Float32),
    effort_score      Nullable(Int8),
    nps               Nullable(Int8),
    agent_id          String,
    source_topic      LowCardinality(String),
    source_partition  UInt16,
    source_offset     UInt64,
    ingested_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.visits
(
    event_id          String,
    customer_id       String,
    occurred_at       DateTime64(3, 'UTC'),
    channel           LowCardinality(String),
    location_id       String,
    duration_seconds  Int32,
    recognized        Bool,
    categories_viewed Array(String),
    source_topic      LowCardinality(String),
    source_partition  UInt16,
    source_offset     UInt64,
    ingested_at       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (customer_id, occurred_at, event_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Current relationship state: one row per customer after deduplication; the highest version
-- (events applied) wins. Read with FINAL or argMax(..., version).
CREATE TABLE IF NOT EXISTS {db}.relationships
(
    customer_id                      String,
    version                          UInt64,
    events                           UInt64,
    first_seen_at                    Nullable(DateTime64(3, 'UTC')),
    last_seen_at                     Nullable(DateTime64(3, 'UTC')),
    first_purchase_at                Nullable(DateTime64(3, 'UTC')),
    purchases_lifetime               UInt64,
    spend_lifetime_minor             Int64,
    discounted_purchases_lifetime    UInt64,
    discounted_spend_lifetime_minor  Int64,
    returns_lifetime                 UInt64,
    refund_lifetime_minor            Int64,
    calls_lifetime                   UInt64,
    complaints_lifetime              UInt64,
    unresolved_calls_lifetime        UInt64,
    visits_lifetime                  UInt64,
    recognized_visits_lifetime       UInt64,
    purchases_7d                     UInt64,
    spend_7d_minor                   Int64,
    discounted_spend_7d_minor        Int64,
    purchases_30d                    UInt64,
    spend_30d_minor                  Int64,
    discounted_spend_30d_minor       Int64,
    calls_30d                        UInt64,
    complaints_30d                   UInt64,
    unresolved_calls_30d             UInt64,
    avg_sentiment_30d                Nullable(Float64),
    avg_effort_30d                   Nullable(Float64),
    visits_30d                       UInt64,
    recognized_share_30d             Nullable(Float64),
    purchases_90d                    UInt64,
    spend_90d_minor                  Int64,
    discounted_spend_90d_minor       Int64,
    calls_90d                        UInt64,
    complaints_90d                   UInt64,
    unresolved_calls_90d             UInt64,
    avg_sentiment_90d                Nullable(Float64),
    avg_effort_90d                   Nullable(Float64),
    visits_90d                       UInt64,
    recognized_share_90d             Nullable(Float64),
    purchases_365d                   UInt64,
    spend_365d_minor                 Int64,
    discounted_spend_365d_minor      Int64,
    mean_gap_days                    Nullable(Float64),
    gap_stddev_days                  Nullable(Float64),
    last_purchase_at                 Nullable(DateTime64(3, 'UTC')),
    last_purchase_channel            Nullable(String),
    last_purchase_location_id        Nullable(String),
    last_purchase_amount_minor       Nullable(Int64),
    last_purchase_categories         Array(String),
    preferred_channel                Nullable(String),
    favourite_category               Nullable(String),
    channels                         Array(String),
    updated_at                       DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Records that could not be processed, one row per (topic, partition, offset, stage).
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    stage         LowCardinality(String),
    source_topic  LowCardinality(String),
    partition     UInt16,
    offset        UInt64,
    error_type    LowCardinality(String),
    reason        String,
    payload_bytes UInt32,
    failed_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (source_topic, partition, offset, stage)
SETTINGS non_replicated_deduplication_window = 10000;
