"""TLS helpers for rfc6455 and chatd: safe ``ssl`` contexts and local certificates."""
