"""vmbackup's development labs (zfs-fuse, network namespaces, OpenZFS guests): not part of the product.

The lab imports the product (`vmbackup`); the product never imports the lab.
"""
