"""KV-cache policies, one module each: a ``CacheConfig`` subclass registered in ``models.cache.CACHE_POLICIES``
(its knobs, validation, row label and ``layer_cache`` factory) and the ``KVLayerCache`` it builds."""
