"""stagerd: crash-safe staged inserts of large objects.

``stagerd.core`` is what the daemon and the client both speak (config,
errors, protocol, object layout, stores, databases, the decision record);
``stagerd.daemon`` is the per-host daemon; ``stagerd.cli`` its command.
The client library is the separate package ``stagerd_client``.
"""
