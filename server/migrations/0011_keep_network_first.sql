-- A group's default for keeping network boot first on UEFI machines (0 or 1).
ALTER TABLE groups ADD COLUMN keep_network_first INTEGER NOT NULL DEFAULT 0;
