"""vmbackup: ZFS backups of VM disks, driven by Ansible, with a Danube Cloud compatible REST API."""

__version__ = "0.1.0"
