"""Redis, as the replicas share it.

- ``connection``: redis-py clients for each way Redis is run (one server,
  Sentinel, Cluster), with short timeouts and the one place redis-py's
  torn-connection errors are caught.
- ``link``: a process's one link to the shared Redis and the one view of
  whether Redis is up (health, back-off, one warning a minute), used by
  everything below and by the avatar cache's Redis tier.
- ``coordination``: the state replicas share besides avatars (download locks,
  Graph throttling pauses, rate-limit buckets) and its key names.
- ``purgechannel``: the channel ``avatarproxy purge`` announces on, and the
  subscription each replica keeps to it.
- ``addressindex``: the Gravatar hash index (``hashindex``) shared in Redis,
  and the lease that lets one replica at a time sync it.

Nothing here knows what an avatar or a Graph call is: ``cache``, ``coalesce``,
``throttle``, ``ratelimit`` and ``purge`` build on this package, never the
other way round (tests/test_imports.py).
"""
