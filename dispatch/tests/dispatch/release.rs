//! Releases from dispatch's side to a real agent, over a real (embedded) broker: a release
//! dispatch registered and signed runs on the device, and a tampered, unsigned or foreign-key
//! release never reaches the device's running model.

// A failing set-up step should fail the test loudly; helpers are test code too.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loopline_agent::{AgentConfig, AgentStats, run};
use loopline_common::{BrokerUrl, CancellationToken};
use loopline_dispatch::registry::{Lineage, Registry};
use loopline_dispatch::rollout::{device_topic, publish_release};
use loopline_dispatch::signing::{PUBLIC_FILE, ReleaseKey};
use loopline_proto::Message;
use loopline_proto::v1::model_report::State;
use loopline_proto::v1::{ModelRelease, ModelReport, TelemetryBatch};
use rumqttc::{AsyncClient, Event, Packet, QoS};

const SITE: &str = "plant";
const LINE: &str = "l1";
const DEVICE: &str = "m";

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// (topic, payload) of everything published under `loopline/v1/#`, in arrival order.
type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn record(broker: &BrokerUrl) -> Messages {
    let options = broker.mqtt_options("release-test-recorder", Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe("loopline/v1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let messages: Messages = Arc::default();
    let sink = Arc::clone(&messages);
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => sink
                    .lock()
                    .unwrap()
                    .push((p.topic.clone(), p.payload.to_vec())),
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
        .await
        .unwrap()
        .unwrap();
    messages
}

/// Waits (at most 20 s) until the device's latest model report satisfies `done`.
async fn report_where(messages: &Messages, done: impl Fn(&ModelReport) -> bool) -> ModelReport {
    let topic = format!("loopline/v1/{SITE}/{LINE}/{DEVICE}/model/report");
    let mut latest = None;
    for _ in 0..400 {
        latest = messages
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, _)| *t == topic)
            .map(|(_, payload)| ModelReport::decode(payload.as_slice()).unwrap());
        if let Some(report) = latest.as_ref().filter(|r| done(r)) {
            return report.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such model report arrived; the latest: {latest:?}");
}

/// A trainer's job output for `version`: a model the agent's line can run, and its metrics.
fn job_output(dir: &Path, version: &str) -> std::path::PathBuf {
    let mut artifact = loopline_agent::bootstrap::fit(loopline_agent::bootstrap::BootstrapKey {
        seed: 99,
        sample_rate_hz: std::num::NonZeroU32::new(1000).unwrap(),
        window_samples: 100,
    })
    .unwrap();
    artifact.metadata.model_version = version.to_owned();
    let out = dir.join(format!("job-{version}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), artifact.to_bytes().unwrap()).unwrap();
    let metrics = serde_json::json!({
        "version": version,
        "line": LINE,
        "candidate": {"f1": 0.9, "precision": 0.9, "recall": 0.9, "anomaly_rate": 0.01},
        "champion": null,
        "data": {"from_us": 0, "to_us": 1_000_000},
    });
    std::fs::write(out.join("metrics.json"), metrics.to_string()).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_unsigned_release_never_reaches_the_running_model() {
    let port = loopline_common::embedded_broker::free_port().unwrap();
    let broker = loopline_common::embedded_broker::start(([127, 0, 0, 1], port).into()).unwrap();
    let messages = record(&broker).await;

    // Dispatch's key, and the agent configured from the public key file, as an operator would.
    let dir = tempfile::tempdir().unwrap();
    let key = ReleaseKey::load_or_generate(&dir.path().join("dispatch")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("dispatch").join(PUBLIC_FILE)).unwrap();
    let config = AgentConfig {
        broker: broker.clone(),
        state_dir: dir.path().join("agent"),
        site: SITE.into(),
        line: LINE.into(),
        devices: vec![DEVICE.into()],
        batch_interval: Duration::from_millis(100),
        window: Duration::from_millis(100),
        batches: 0,
        drain_timeout: Duration::from_secs(10),
        client_id_prefix: format!("release-test-{}", std::process::id()),
        model_public_key: Some(public.trim().to_owned()),
        ..AgentConfig::default()
    };
    let token = CancellationToken::new();
    let agent = tokio::spawn(run(
        config,
        None,
        token.clone(),
        Arc::new(AgentStats::new()),
    ));
    let first = report_where(&messages, |r| r.state == State::Running as i32).await;
    assert!(first.running_version.starts_with("bootstrap-"), "{first:?}");

    let options = broker.mqtt_options("release-test-dispatch", Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = device_topic(SITE, LINE, DEVICE).unwrap();

    // Registered, signed and stored by dispatch, then sent to the device's own topic.
    let registry = Registry::open(&dir.path().join("lake")).unwrap();
    let lineage = Lineage {
        data_from_us: 0,
        data_to_us: 1_000_000,
        trigger: "manual: release test".into(),
        job_id: "j-1".into(),
        backend: "local".into(),
        gpus: Vec::new(),
        created_at_us: now_us(),
        parent_champion: None,
    };
    let sign = |version: &str, key: &ReleaseKey| -> ModelRelease {
        let entry = registry
            .register(LINE, version, &job_output(dir.path(), version), &lineage)
            .unwrap();
        let release = key.sign(version, entry.read_artifact().unwrap(), now_us());
        registry.store_release(LINE, version, &release).unwrap();
        registry.release(LINE, version).unwrap().unwrap()
    };

    // (a) A good release runs.
    publish_release(&client, &topic, &sign("v2", &key))
        .await
        .unwrap();
    let good = report_where(&messages, |r| r.running_version == "v2").await;
    assert_eq!(good.last_error, "", "{good:?}");

    // Each bad release is refused with its reason, and v2 keeps running.
    let refused = |version: &'static str| {
        let messages = Arc::clone(&messages);
        async move {
            let report = report_where(&messages, |r| r.rejected_version == version).await;
            assert_eq!(report.state, State::Rejected as i32, "{report:?}");
            assert_eq!(report.running_version, "v2", "{report:?}");
            report.last_error
        }
    };

    // (b) One byte of the artifact flipped after signing.
    let mut tampered = sign("v3", &key);
    let middle = tampered.artifact.len() / 2;
    tampered.artifact[middle] ^= 0x01;
    publish_release(&client, &topic, &tampered).await.unwrap();
    let why = refused("v3").await;
    assert!(why.contains("the artifact hashes to sha256"), "{why}");

    // (c) The signature zeroed, then absent.
    let mut zeroed = sign("v4", &key);
    zeroed.signature = vec![0; 64];
    publish_release(&client, &topic, &zeroed).await.unwrap();
    let why = refused("v4").await;
    assert!(why.contains("signature is not valid"), "{why}");
    let mut unsigned = sign("v5", &key);
    unsigned.signature.clear();
    publish_release(&client, &topic, &unsigned).await.unwrap();
    let why = refused("v5").await;
    assert!(why.contains("unsigned"), "{why}");

    // (d) Properly signed, by another dispatch's key.
    let stranger = ReleaseKey::load_or_generate(&dir.path().join("stranger")).unwrap();
    assert_ne!(stranger.public_key_hex(), key.public_key_hex());
    publish_release(&client, &topic, &sign("v6", &stranger))
        .await
        .unwrap();
    let why = refused("v6").await;
    assert!(why.contains("signature is not valid"), "{why}");

    // What the device scores after the refusals still comes from v2.
    let seen = messages.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later: Vec<TelemetryBatch> = messages.lock().unwrap()[seen..]
        .iter()
        .filter(|(topic, _)| topic.ends_with("/telemetry"))
        .map(|(_, payload)| TelemetryBatch::decode(payload.as_slice()).unwrap())
        .collect();
    assert!(!later.is_empty());
    for batch in &later {
        assert_eq!(batch.model_version, "v2");
        assert!(batch.inferences.iter().all(|i| i.model_version == "v2"));
    }
    token.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.devices[0].model_version, "v2");
}
