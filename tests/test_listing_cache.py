"""The listings' cache (routes.ListCache): a client sees its writes at once, the clock never makes a request
pay the whole listing, and concurrent misses build it once."""

from __future__ import annotations

import threading
import time

from vmbackup.http.routes import ListCache


class Counter:
    def __init__(self, pause: float = 0.0):
        self.calls = 0
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.pause)
        return {"built": n}


def test_a_changed_generation_is_rebuilt_before_the_answer():
    cache, build = ListCache(), Counter()
    assert cache.get(1, ("k",), build) == '{"built": 1}'
    assert cache.get(1, ("k",), build) == '{"built": 1}' and build.calls == 1
    assert cache.get(2, ("k",), build) == '{"built": 2}'  # a write: the next answer has it


def test_an_old_answer_is_given_while_one_thread_rebuilds_it():
    cache, build = ListCache(max_age=0.5), Counter(pause=0.3)
    assert cache.get(1, ("k",), build) == '{"built": 1}'
    time.sleep(0.55)
    started = time.monotonic()
    answers = [cache.get(1, ("k",), build) for _ in range(5)]
    assert time.monotonic() - started < 0.1, "a request waited for the rebuild"
    assert answers == ['{"built": 1}'] * 5
    deadline = time.monotonic() + 5
    while cache.get(1, ("k",), build) != '{"built": 2}':
        assert time.monotonic() < deadline, "the background rebuild never landed"
        time.sleep(0.05)
    assert build.calls == 2  # one rebuild, not one per request


def test_concurrent_misses_build_once_and_keys_stay_apart():
    cache, build = ListCache(), Counter(pause=0.2)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get(1, ("k",), build))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ['{"built": 1}'] * 4 and build.calls == 1
    assert cache.get(1, ("other",), build) == '{"built": 2}'


def test_the_cache_keeps_at_most_its_size():
    cache, build = ListCache(size=3), Counter()
    for n in range(10):
        cache.get(1, (n,), build)
    assert len(cache._entries) == 3
    assert cache.get(1, (9,), build) == '{"built": 10}'  # the newest stayed


def test_no_builder_lock_stays_behind_per_key():
    """Keys carry query strings a client chooses: a built key leaves nothing but its bounded entry."""
    cache, build = ListCache(size=3), Counter()
    for n in range(50):
        cache.get(1, ("q%d" % n,), build)
    assert cache._building == {} and len(cache._entries) == 3
