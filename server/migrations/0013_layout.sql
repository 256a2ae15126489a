-- How restores lay an image out on disks larger than the image's: grow (the last partition
-- and its filesystem fill the disk), keep, or proportional. A deployment's or schedule's
-- NULL: each machine's group's choice, else grow.
ALTER TABLE deployments ADD COLUMN layout TEXT;
ALTER TABLE schedules ADD COLUMN layout TEXT;
ALTER TABLE groups ADD COLUMN layout TEXT;
