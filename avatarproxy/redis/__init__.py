"""Redis, as the replicas share it.

``connection`` builds redis-py clients for each way Redis is run (one server,
Sentinel, Cluster).
"""
