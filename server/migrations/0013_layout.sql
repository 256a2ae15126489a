-- How a restore deployment lays the image out on disks larger than the image's: grow (the
-- last partition and its filesystem fill the disk), keep, or proportional.
ALTER TABLE deployments ADD COLUMN layout TEXT NOT NULL DEFAULT 'grow';
