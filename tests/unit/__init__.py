"""Unit tier: no FUSE, no sandbox servers; the base install and pytest alone (`make test-unit`)."""
