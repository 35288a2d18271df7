"""The durable queue: the spool on disk, the runner that works it, and (later) bounces."""
