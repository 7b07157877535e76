"""What makes this test session's shared resources its own.

Two clones may run `make test` on one machine at once (helpers, CI): every database name,
Redis key, queue and port a test uses is unique to the session. SESSION names the session
(its pid, so a crashed session's leftovers can be recognised, and a random part); the broker
keys of every process the tests start carry BROKER_PREFIX (kombu's global key prefix).
"""

from __future__ import annotations

import os
import secrets

SESSION = os.environ.get("EOS_TEST_SESSION") or f"p{os.getpid()}_{secrets.token_hex(3)}"
BROKER_PREFIX = f"eos-test-{SESSION}:"
# The Redis server and database the tests use; the prefix, not the database number, keeps sessions apart.
REDIS_URL = os.environ.get("EOS_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_broker(url: str = REDIS_URL, prefix: str = BROKER_PREFIX) -> int:
    """Delete this session's broker keys (queues, unacked messages); returns how many."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    return int(client.delete(*keys)) if keys else 0
