-- Contact details arrive in the events' optional contact fields and are stored only as keyed
-- pseudonyms (pii:email:<hex>, pii:phone:<hex>): they still link a customer's channels.
ALTER TABLE {db}.purchases ADD COLUMN IF NOT EXISTS contact_email Nullable(String) AFTER location_id;
ALTER TABLE {db}.purchases ADD COLUMN IF NOT EXISTS contact_phone Nullable(String) AFTER contact_email;
ALTER TABLE {db}.calls ADD COLUMN IF NOT EXISTS caller_phone Nullable(String) AFTER agent_id;
