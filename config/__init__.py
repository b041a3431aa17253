"""Configuration: every setting (the only reader of the environment) and every topic name."""
