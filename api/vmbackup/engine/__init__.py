"""The engine layer: where playbooks run (local ansible-runner with its CPU group, or AWX); imports only the domain."""
