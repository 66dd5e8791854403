#!/usr/bin/env python3
"""The baseline of bench/ingest: the subscriber a data engineer would write in an afternoon.

paho-mqtt (MQTT 3.1.1, its default; QoS 1 with paho's automatic acknowledgement, sent when
on_message returns), the protobuf runtime with message classes built at run time from the
wire contract's FileDescriptorSet (written by `loopline-bench-descriptor`; there is no protoc),
numpy to unpack the delta-coded columns, and pyarrow to write one zstd Parquet file per
(site, line, hour) every --roll-rows rows or --roll-age seconds. Rows are the narrow rows
loopline-ingest writes: ts, device, sensor, value, quality, boot_id, seq, with site, line,
date and hour in the Hive path.

What it does not do, as such a script would not: fsync, write to a temporary name first, sort
rows, de-duplicate, or check the payload against its topic. Every file written is recorded as
one JSON line in --manifest (path, rows, bytes, written_at_us), which is how the harness counts
what reached the disk.

Runs until SIGTERM or SIGINT, then writes what it buffered and exits.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import paho.mqtt.client as mqtt
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HOUR_US = 3_600_000_000
TOPIC = "loopline/v1/+/+/+/telemetry"


def message_class(descriptor_file, name):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(descriptor_file, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in fds.file:
        pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def now_us():
    return time.time_ns() // 1000


class Buffer:
    """Rows of one (site, line, hour) waiting to become a file."""

    def __init__(self):
        self.opened = time.monotonic()
        self.rows = 0
        self.ts, self.value, self.quality, self.seq = [], [], [], []
        self.device, self.sensor, self.boot_id = [], [], []

    def add(self, ts, value, quality, device, sensor, boot_id, seq):
        n = len(ts)
        self.ts.append(ts)
        self.value.append(value)
        self.quality.append(quality)
        self.seq.append(np.full(n, seq, dtype=np.int64))
        self.device.extend([device] * n)
        self.sensor.extend([sensor] * n)
        self.boot_id.extend([boot_id] * n)
        self.rows += n

    def table(self):
        return pa.table({
            "ts": pa.array(np.concatenate(self.ts), pa.timestamp("us", tz="UTC")),
            "device": pa.array(self.device, pa.string()),
            "sensor": pa.array(self.sensor, pa.string()),
            "value": pa.array(np.concatenate(self.value)),
            "quality": pa.array(np.concatenate(self.quality)),
            "boot_id": pa.array(self.boot_id, pa.string()),
            "seq": pa.array(np.concatenate(self.seq)),
        })


class Writer:
    def __init__(self, args):
        self.out = args.out
        self.roll_rows = args.roll_rows
        self.roll_age = args.roll_age
        self.buffers = {}
        self.files = 0
        self.manifest = open(args.manifest, "a", buffering=1)

    def add(self, site, line, hour, *row):
        key = (site, line, hour)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = Buffer()
        buf.add(*row)
        if buf.rows >= self.roll_rows:
            self.flush(key)

    def flush(self, key):
        buf = self.buffers.pop(key)
        site, line, hour = key
        stamp = time.gmtime(hour * 3600)
        folder = os.path.join(
            self.out, "telemetry", f"site={site}", f"line={line}",
            time.strftime("date=%Y-%m-%d", stamp), time.strftime("hour=%H", stamp))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"part-{self.files:08d}.parquet")
        self.files += 1
        pq.write_table(buf.table(), path, compression="zstd")
        self.manifest.write(json.dumps({
            "path": path, "rows": buf.rows, "bytes": os.path.getsize(path),
            "written_at_us": now_us()}) + "\n")

    def flush_due(self):
        now = time.monotonic()
        for key in [k for k, b in self.buffers.items() if now - b.opened >= self.roll_age]:
            self.flush(key)

    def flush_all(self):
        for key in list(self.buffers):
            self.flush(key)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, help="broker port on 127.0.0.1")
    p.add_argument("--descriptor", required=True, help="FileDescriptorSet of loopline.proto")
    p.add_argument("--out", required=True, help="lake folder")
    p.add_argument("--manifest", required=True, help="JSON lines, one per file written")
    p.add_argument("--roll-rows", type=int, default=1_000_000)
    p.add_argument("--roll-age", type=float, default=1.0, help="seconds")
    args = p.parse_args()

    TelemetryBatch = message_class(args.descriptor, "loopline.v1.TelemetryBatch")
    writer = Writer(args)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(TOPIC, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print(json.dumps({"subscribed_us": now_us()}), flush=True)

    def on_message(client, userdata, msg):
        batch = TelemetryBatch.FromString(msg.payload)
        site, line = batch.device.site, batch.device.line
        for ch in batch.channels:
            n = len(ch.values)
            ts = batch.base_ts_us + np.cumsum(np.array(ch.ts_delta_us, dtype=np.int64))
            value = np.array(ch.values, dtype=np.float64)
            if len(ch.quality):
                quality = np.array(ch.quality, dtype=np.int16)
            else:
                quality = np.zeros(n, dtype=np.int16)
            first, last = ts[0] // HOUR_US, ts[-1] // HOUR_US
            if first == last:
                writer.add(site, line, int(first), ts, value, quality,
                           batch.device.device, ch.sensor, batch.boot_id, batch.seq)
                continue
            hours = ts // HOUR_US
            for hour in np.unique(hours):
                m = hours == hour
                writer.add(site, line, int(hour), ts[m], value[m], quality[m],
                           batch.device.device, ch.sensor, batch.boot_id, batch.seq)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-baseline-{os.getpid()}")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)
    while not stop:
        client.loop(timeout=0.05)
        writer.flush_due()
    writer.flush_all()
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
