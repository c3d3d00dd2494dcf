"""The domain layer: facts and enums, refusals, rules, time; pure, it imports nothing else of vmbackup."""
