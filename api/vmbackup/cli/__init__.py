"""The command line: `vmbackup serve|user|discover|sync|check|definitions` and the API client in `es` syntax."""
