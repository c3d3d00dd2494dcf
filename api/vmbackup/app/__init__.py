"""The application layer: use cases and background workers (access, backups, tasks, scheduler, discovery,
sync, alerts, metrics, check); imports the store, the engines and the domain."""
