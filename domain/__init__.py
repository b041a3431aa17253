"""The pure domain: events, relationship state, validation, pseudonyms, the loyalty model and the alert rules.

No Faust, Kafka or ClickHouse here, and no clock: time is always an argument.
"""
