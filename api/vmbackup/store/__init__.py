"""The store layer: the journal and the record repository on disk; imports only the domain."""
