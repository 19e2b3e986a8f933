"""nginx-rtmp's statistics (its `rtmp_stat` XML on the node's private control listener), read
at scrape time and exported as Prometheus metrics of the media node.

Only numbers are exported: stream names become labels only when they are stream ids (digits),
so a publish still named by its key could never reach a metric.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass, field

import tornado.httpclient
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class StreamStat:
    """One RTMP stream of the `live` application."""

    name: str
    publishing: bool
    clients: int
    bw_in: int    # bits per second, nginx-rtmp's own average
    bw_out: int


@dataclass(frozen=True)
class RtmpStat:
    """What the node's nginx-rtmp reports about itself."""

    accepted: int = 0
    bw_in: int = 0
    bw_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    streams: list[StreamStat] = field(default_factory=list)

    @property
    def publishers(self) -> int:
        return sum(1 for stream in self.streams if stream.publishing)

    @property
    def players(self) -> int:
        """Clients playing (the node's own FFmpeg pulls), i.e. every client but publishers."""
        return sum(stream.clients for stream in self.streams) - self.publishers


def _int(element: ElementTree.Element | None, path: str) -> int:
    text = element.findtext(path) if element is not None else None
    try:
        return int(text or 0)
    except ValueError:
        return 0


def parse_stat(xml: bytes) -> RtmpStat:
    """The numbers of an `rtmp_stat all` document (ValueError when it is not one)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not an rtmp_stat document: {exc}") from None
    if root.tag != "rtmp":
        raise ValueError("not an rtmp_stat document: no <rtmp> root")
    streams = [
        StreamStat(name=stream.findtext("name") or "", publishing=stream.find("publishing") is not None,
                   clients=_int(stream, "nclients"), bw_in=_int(stream, "bw_in"),
                   bw_out=_int(stream, "bw_out"))
        for stream in root.iterfind("server/application/live/stream")
    ]
    return RtmpStat(accepted=_int(root, "naccepted"), bw_in=_int(root, "bw_in"),
                    bw_out=_int(root, "bw_out"), bytes_in=_int(root, "bytes_in"),
                    bytes_out=_int(root, "bytes_out"), streams=streams)


async def fetch_stat(url: str, secret: str, timeout: float = 2.0) -> RtmpStat:
    """GET the node's stat page (asynchronously; the control listener wants the secret)."""
    response = await tornado.httpclient.AsyncHTTPClient().fetch(
        url, headers={"X-SF-Control": secret}, request_timeout=timeout, connect_timeout=timeout,
        raise_error=False)
    if response.code != 200:
        raise OSError(f"rtmp_stat answered {response.code}")
    return parse_stat(response.body or b"")


class RtmpStatCollector(Collector):
    """Exports the last stat read (set by `update`); nothing but `sf_rtmp_up 0` without one."""

    def __init__(self) -> None:
        self.stat: RtmpStat | None = None
        self.enabled = False  # only a media node's ingest process reports

    def update(self, stat: RtmpStat | None) -> None:
        self.enabled = True
        self.stat = stat

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if not self.enabled:
            return
        stat = self.stat
        yield GaugeMetricFamily("sf_rtmp_up", "1 when nginx-rtmp's stat was read at this scrape",
                                value=1 if stat else 0)
        if stat is None:
            return
        yield GaugeMetricFamily("sf_rtmp_publishers", "RTMP publishers (encoders) on this node",
                                value=stat.publishers)
        yield GaugeMetricFamily("sf_rtmp_players", "RTMP players (transcoder pulls) on this node",
                                value=stat.players)
        yield GaugeMetricFamily("sf_rtmp_bandwidth_in_bits_per_second",
                                "RTMP ingest bandwidth of this node", value=stat.bw_in)
        yield GaugeMetricFamily("sf_rtmp_bandwidth_out_bits_per_second",
                                "RTMP bandwidth sent by this node", value=stat.bw_out)
        yield CounterMetricFamily("sf_rtmp_received_bytes", "Bytes nginx-rtmp received",
                                  value=stat.bytes_in)
        yield CounterMetricFamily("sf_rtmp_sent_bytes", "Bytes nginx-rtmp sent",
                                  value=stat.bytes_out)
        yield CounterMetricFamily("sf_rtmp_connections_accepted",
                                  "RTMP connections nginx-rtmp accepted", value=stat.accepted)
        per_stream = GaugeMetricFamily("sf_rtmp_stream_bandwidth_in_bits_per_second",
                                       "Ingest bandwidth of each published stream",
                                       labels=["stream_id"])
        for stream in stat.streams:
            if stream.publishing and stream.name.isdigit():
                per_stream.add_metric([stream.name], stream.bw_in)
        yield per_stream


RTMP_STAT = RtmpStatCollector()
REGISTRY.register(RTMP_STAT)
