//! `loopline-bench-null`: the broker's ceiling. Subscribes to every device's telemetry at
//! QoS 1 (MQTT 5), acknowledges each message as soon as it arrives (rumqttc's automatic
//! PUBACK), and counts messages and samples; it keeps nothing and writes nothing. Whatever
//! rate it reaches is the most any subscriber on the same broker, load and machine can reach.
//!
//! Prints one JSON line when it has received `--expect-messages` (or when `--timeout-s`
//! passes first), then waits for SIGTERM or SIGINT, so that whoever runs it can read its
//! resource use before it exits.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use loopline_bench_ingest::{BROKER_MAX_PACKET, now_us};
use loopline_proto::Message;
use loopline_proto::topic::TELEMETRY_FILTER;
use loopline_proto::v1::TelemetryBatch;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

/// Counts Loopline telemetry received from the broker; the benchmark's ceiling.
#[derive(Debug, Parser)]
#[command(name = "loopline-bench-null")]
struct Args {
    /// Broker port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Messages to wait for.
    #[arg(long)]
    expect_messages: u64,
    /// Report what arrived after this many seconds even if it is not everything.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Debug, Default, Serialize)]
struct Counted {
    complete: bool,
    messages: u64,
    samples: u64,
    /// Payloads that were not a `TelemetryBatch` (counted, not sampled).
    undecodable: u64,
    subscribed_us: i64,
    first_us: i64,
    last_us: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut options = MqttOptions::new(
        format!("loopline-bench-null-{}", std::process::id()),
        "127.0.0.1",
        args.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(BROKER_MAX_PACKET));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_s));
    tokio::pin!(deadline);

    let mut counted = Counted::default();
    let mut reported = false;
    loop {
        let event = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = &mut deadline, if !reported => {
                println!("{}", serde_json::to_string(&counted)?);
                reported = true;
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                client.try_subscribe(TELEMETRY_FILTER, QoS::AtLeastOnce)?;
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    bail!("the broker refused the subscription to {TELEMETRY_FILTER}: {ack:?}");
                }
                counted.subscribed_us = now_us();
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let now = now_us();
                if counted.messages == 0 {
                    counted.first_us = now;
                }
                counted.last_us = now;
                counted.messages += 1;
                match TelemetryBatch::decode(publish.payload) {
                    Ok(batch) => counted.samples += batch.sample_count() as u64,
                    Err(_) => counted.undecodable += 1,
                }
                if !reported && counted.messages >= args.expect_messages {
                    counted.complete = true;
                    println!("{}", serde_json::to_string(&counted)?);
                    reported = true;
                }
            }
            Ok(_) => {}
            Err(e) => bail!("broker connection on port {}: {e}", args.port),
        }
    }
    Ok(())
}
