"""Prometheus metrics: the ACKs a listener writes, and the message store read at scrape time.

Two halves, one registry of their own (never prometheus_client's global one, so engines and
tests in one process do not collide):

- ACKs, counted as they are written (:func:`observe_ack`, called by the MLLP listener):
  ``engine_acks_total{channel, partner, code}``, ``engine_ack_seconds{channel}`` (from the
  frame's last byte to the ACK ready to write), and from the last 1,000 ACKs per partner
  ``engine_partner_ack_p99_seconds`` and ``engine_partner_nak_ratio`` (AE, AR, CE, CR over all).
  A partner is ``MSH-3/MSH-4`` of the message (first component each, at most 60 characters; ""
  when unreadable); past 50 partners on one channel the rest count as ``other``, since a
  sender chooses these values and labels must stay few.
- The store (:func:`register_store`): messages per status, queue depth and age, warnings,
  errors by kind, oldest pending message per partner; a few indexed queries per scrape
  (:mod:`engine.stores.message_search`). No label ever carries a value from a message's body.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import deque
from functools import lru_cache
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from engine.stores import message_search
from engine.stores.message_tables import PENDING, now

log = logging.getLogger("engine.metrics")

ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram buckets of ``engine_ack_seconds``, in seconds (0.5 ms to 5 s)."""
RESERVOIR = 1000
"""ACKs kept per (channel, partner) and per channel for the percentiles and the NAK ratio."""
MAX_PARTNERS = 50
"""Distinct partner labels per channel; later ones are counted as ``other``."""
NAKS = frozenset({"AE", "AR", "CE", "CR"})


class _Acks:
    """One channel's ACKs: counts per (partner, code), the histogram, the recent samples."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(ACK_BUCKETS) + 1)  # the last: above 5 s
        self.seconds = 0.0
        self.recent: deque = deque(maxlen=RESERVOIR)
        self.by_partner: dict[str, deque] = {}


class Metrics:
    """The engine's metrics on a registry of their own (``self.registry``).

    ACKs are counted in plain dicts under one lock and turned into metric families at scrape
    time: a prometheus_client Counter and Histogram cost the listener ~5 µs an ACK, these ~1 µs.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()  # written by the listeners' event loop, read by a scrape
        self._channels: dict[str, _Acks] = {}
        self._store: _StoreCollector | None = None
        self.registry.register(_AckCollector(self))

    def observe_ack(self, channel: str, partner: str, code: str, seconds: float) -> None:
        """One ACK with MSA-1 ``code`` written on ``channel`` to ``partner`` after ``seconds``."""
        slot = bisect_left(ACK_BUCKETS, seconds)  # the first bucket whose bound is >= seconds
        sample = (seconds, code in NAKS)
        with self._lock:
            acks = self._channels.get(channel)
            if acks is None:
                acks = self._channels[channel] = _Acks()
            mine = acks.by_partner.get(partner)
            if mine is None:
                if len(acks.by_partner) >= MAX_PARTNERS:
                    partner = "other"
                mine = acks.by_partner.setdefault(partner, deque(maxlen=RESERVOIR))
            key = (partner, code)
            acks.counts[key] = acks.counts.get(key, 0) + 1
            acks.buckets[slot] += 1
            acks.seconds += seconds
            acks.recent.append(sample)
            mine.append(sample)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """channel -> copies of its counts, buckets, seconds sum and recent samples per partner."""
        with self._lock:
            return {
                channel: dict(
                    counts=dict(a.counts),
                    buckets=list(a.buckets),
                    seconds=a.seconds,
                    by_partner={p: list(d) for p, d in a.by_partner.items()},
                )
                for channel, a in self._channels.items()
            }

    def ack_latency(self, channel: str) -> dict[str, float] | None:
        """Over the channel's last 1,000 ACKs: ``{"p50": ms, "p99": ms, "count": n}``; None
        before its first ACK."""
        with self._lock:
            acks = self._channels.get(channel)
            recent = list(acks.recent) if acks else []
        seconds = sorted(s for s, _nak in recent)
        if not seconds:
            return None
        return {"p50": _rank(seconds, 0.5) * 1000, "p99": _rank(seconds, 0.99) * 1000, "count": len(seconds)}

    def register_store(self, engine: Engine) -> None:
        """Read the message store at ``engine`` at each scrape (replacing a store registered before)."""
        if self._store is not None:
            self.registry.unregister(self._store)
        self._store = _StoreCollector(engine)
        self.registry.register(self._store)

    def render(self, engine: Engine | None = None) -> tuple[bytes, str]:
        """The exposition text and its content type, for ``GET /metrics``; ``engine``: the
        message store to read (registered on first use, as by :meth:`register_store`)."""
        if engine is not None and (self._store is None or self._store.engine is not engine):
            self.register_store(engine)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``ordered`` (ascending, not empty)."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ack_partner(ack: str) -> str:
    """The partner an ACK answers: its MSH-5/MSH-6, which are the message's MSH-3/MSH-4.

    Read from the ACK the receiver built, so the message's header is not read a second time;
    the few distinct MSH-5/MSH-6 texts a listener meets are turned into labels once."""
    if len(ack) < 4:
        return ""
    fs = ack[3]
    start = -1
    for _ in range(4):  # MSH|enc|MSH-3|MSH-4|: MSH-5 begins after the fourth separator
        start = ack.find(fs, start + 1)
        if start < 0:
            return ""
    end = ack.find(fs, ack.find(fs, start + 1) + 1)
    if end < 0:
        return ""
    return _partner_label(ack[start + 1 : end], fs, ack[4:5])


@lru_cache(maxsize=1024)
def _partner_label(fields: str, fs: str, cs: str) -> str:
    """``"APP/FACILITY"`` from MSH-5 and MSH-6 as the ACK writes them (``fields``: both, with
    the field separator between them)."""
    app, _, facility = fields.partition(fs)
    cs = cs or "^"
    return message_search.partner(app.split(cs, 1)[0], facility.split(cs, 1)[0])


class _AckCollector:
    """The ACK families, from :meth:`Metrics.snapshot` at scrape time."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self):
        acks = CounterMetricFamily("engine_acks", "ACKs written, by MSA-1 code", labels=["channel", "partner", "code"])
        latency = HistogramMetricFamily(
            "engine_ack_seconds", "Seconds from a message's last byte to its ACK ready to write", labels=["channel"]
        )
        p99 = GaugeMetricFamily(
            "engine_partner_ack_p99_seconds", "p99 of the last 1000 ACK times", labels=["channel", "partner"]
        )
        naks = GaugeMetricFamily(
            "engine_partner_nak_ratio", "Share of NAKs in the last 1000 ACKs", labels=["channel", "partner"]
        )
        for channel, a in sorted(self._metrics.snapshot().items()):
            for (partner, code), n in sorted(a["counts"].items()):
                acks.add_metric([channel, partner, code], n)
            bounds = [*(repr(b) for b in ACK_BUCKETS), "+Inf"]
            latency.add_metric([channel], list(zip(bounds, accumulate(a["buckets"]))), a["seconds"])
            for partner, samples in sorted(a["by_partner"].items()):
                p99.add_metric([channel, partner], _rank(sorted(s for s, _ in samples), 0.99))
                naks.add_metric([channel, partner], sum(1 for _, nak in samples if nak) / len(samples))
        yield from (acks, latency, p99, naks)


class _StoreCollector:
    """The message store's state, read when scraped; ``engine_store_up`` 0 when it cannot be."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        up = GaugeMetricFamily("engine_store_up", "1 when the message store answered this scrape")
        try:
            stats = message_search.channel_stats(self.engine)
            kinds = message_search.error_kinds(self.engine)
            partners = message_search.pending_by_partner(self.engine)
        except SQLAlchemyError as exc:
            log.warning("metrics: message store unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stamp = now()
        count = GaugeMetricFamily("engine_messages", "Messages per channel and status", labels=["channel", "status"])
        depth = GaugeMetricFamily("engine_queue_depth", "Messages still in work", labels=["channel"])
        age = GaugeMetricFamily(
            "engine_queue_oldest_seconds", "Age of the oldest message still in work (0: none)", labels=["channel"]
        )
        warned = GaugeMetricFamily("engine_message_warnings", "Messages with warnings", labels=["channel"])
        for channel, s in sorted(stats.items()):
            for status, n in sorted(s["counts"].items()):
                count.add_metric([channel, status], n)
            depth.add_metric([channel], sum(s["counts"].get(p, 0) for p in PENDING))
            oldest = s["oldest_queued_at"]
            age.add_metric([channel], (stamp - oldest).total_seconds() if oldest else 0.0)
            warned.add_metric([channel], s["warnings"])
        errors = GaugeMetricFamily(
            "engine_errors_by_reason", "Messages in ERROR by the kind of error", labels=["channel", "reason"]
        )
        for (channel, reason), n in sorted(kinds.items()):
            errors.add_metric([channel, reason], n)
        waiting = GaugeMetricFamily(
            "engine_partner_oldest_queued_seconds",
            "Age of the oldest message still in work per sending partner",
            labels=["channel", "partner"],
        )
        for (channel, partner), at in sorted(partners.items()):
            waiting.add_metric([channel, partner], (stamp - at).total_seconds())
        yield from (count, depth, age, warned, errors, waiting)


METRICS = Metrics()
"""The process's metrics: the listeners write to it, ``GET /metrics`` renders it."""


def observe_ack(channel: str, partner: str, code: str, seconds: float) -> None:
    """Count one ACK (see :meth:`Metrics.observe_ack`)."""
    METRICS.observe_ack(channel, partner, code, seconds)


def ack_latency(channel: str) -> dict[str, float] | None:
    """p50/p99 in ms over the channel's last 1,000 ACKs (see :meth:`Metrics.ack_latency`)."""
    return METRICS.ack_latency(channel)


def register_store(engine: Engine) -> None:
    """Export the message store at ``engine`` (see :meth:`Metrics.register_store`)."""
    METRICS.register_store(engine)


def render(engine: Engine | None = None) -> tuple[bytes, str]:
    """(Prometheus text, content type) of the process's metrics (see :meth:`Metrics.render`)."""
    return METRICS.render(engine)
