-- Personalization (issue 18): variables of machines and groups (a JSON object of strings),
-- a deployment's and a schedule's personalization (a JSON object: proto::api::Personalize;
-- `{}` is its default, personalization on), and what it changed on each task's machine (a
-- JSON array of lines). Portable SQL, as 0001.
ALTER TABLE machines ADD COLUMN vars TEXT NOT NULL DEFAULT '{}';
ALTER TABLE groups ADD COLUMN vars TEXT NOT NULL DEFAULT '{}';
ALTER TABLE deployments ADD COLUMN personalize TEXT NOT NULL DEFAULT '{}';
ALTER TABLE schedules ADD COLUMN personalize TEXT NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD COLUMN personalized TEXT NOT NULL DEFAULT '[]';
