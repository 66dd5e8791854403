//! TLS to a real Mosquitto: server-authenticated and mutual TLS, username/password over TLS,
//! and every way the TLS settings can be wrong.
//!
//! The certificates are made for each run with rcgen: a CA, a server certificate for
//! 127.0.0.1 and a client certificate, plus a second, unrelated CA. Mosquitto listens on
//! loopback only, on a free port, and is killed on drop. Without Mosquitto the broker tests say
//! they are skipped (they fail instead when `LOOPLINE_TEST_BROKER=mosquitto`).

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use loopline_common::{BrokerUrl, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Guards against a hang only; no test asserts on time.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Writes past the test harness's capture: which broker runs, or why a test is skipped.
fn announce(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// PEM files of one test run.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.pem`, `server.pem`/`server.key` (127.0.0.1), `client.pem`/`client.key` signed by
    /// the CA; `other-ca.pem` and `other-client.pem`/`other-client.key` from an unrelated CA.
    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to the mosquitto user before it reads the files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pki = Pki { dir };
        let ca = pki.ca("ca", "Loopline test CA");
        let other = pki.ca("other-ca", "Unrelated CA");
        pki.leaf(&ca, "server", ExtendedKeyUsagePurpose::ServerAuth);
        pki.leaf(&ca, "client", ExtendedKeyUsagePurpose::ClientAuth);
        pki.leaf(&other, "other-client", ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    fn ca(&self, name: &str, common_name: &str) -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        Issuer::new(params, key)
    }

    fn leaf(&self, issuer: &Issuer<'static, KeyPair>, name: &str, usage: ExtendedKeyUsagePurpose) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn tls(&self, ca: &str, client: Option<&str>) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.path(ca)),
            client_cert_file: client.map(|name| self.path(&format!("{name}.pem"))),
            client_key_file: client.map(|name| self.path(&format!("{name}.key"))),
        }
    }
}

/// The Mosquitto binary: on the PATH, or in the sbin directories Debian installs it to.
fn mosquitto_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
}

fn mosquitto_required() -> bool {
    std::env::var("LOOPLINE_TEST_BROKER").as_deref() == Ok("mosquitto")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mosquitto with one TLS listener on 127.0.0.1, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    /// `None` (after saying so) when Mosquitto is not installed.
    fn start(pki: &Pki, require_certificate: bool, password_file: Option<&Path>) -> Option<Self> {
        let Some(binary) = mosquitto_binary() else {
            assert!(
                !mosquitto_required(),
                "LOOPLINE_TEST_BROKER=mosquitto but mosquitto is not installed"
            );
            announce("TLS broker test skipped: Mosquitto is missing (install mosquitto to run it)");
            return None;
        };
        let port = free_port();
        let mut conf = format!(
            "per_listener_settings false\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate {require_certificate}\n",
            ca = pki.path("ca.pem").display(),
            cert = pki.path("server.pem").display(),
            key = pki.path("server.key").display(),
        );
        match password_file {
            Some(file) => {
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        let conf_path = pki.path(&format!("mosquitto-{port}.conf"));
        std::fs::write(&conf_path, conf).unwrap();
        let log = pki.path(&format!("mosquitto-{port}.log"));
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut broker = Mosquitto { child, port, log };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                announce(&format!("TLS tests: mosquitto on 127.0.0.1:{port}"));
                return Some(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("mosquitto exited with {status}:\n{}", broker.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mosquitto did not listen on port {port}:\n{}",
            broker.log_text()
        );
    }

    fn url(&self) -> BrokerUrl {
        format!("mqtts://127.0.0.1:{}", self.port).parse().unwrap()
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until the first error; `Ok` only if the broker sent CONNACK first (then the error is
/// whatever came after, or a hang guard).
async fn first_error(eventloop: &mut EventLoop) -> String {
    loop {
        match tokio::time::timeout(HANG_GUARD, eventloop.poll()).await {
            Err(_) => return "no error before the hang guard".to_owned(),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return format!("connected: {ack:?}");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
        }
    }
}

/// Connects with `options`, subscribes, publishes one QoS 1 message and waits for its PUBACK
/// and for the message to come back. Returns the payload received.
async fn round_trip(options: MqttOptions, topic: &str, payload: &[u8]) -> Vec<u8> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut acked = false;
    let mut received = None;
    let work = async {
        while !(acked && received.is_some()) {
            match eventloop.poll().await.unwrap() {
                Event::Incoming(Packet::ConnAck(_)) => {
                    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
                        .await
                        .unwrap();
                }
                Event::Incoming(Packet::PubAck(_)) => acked = true,
                Event::Incoming(Packet::Publish(publish)) => {
                    assert_eq!(publish.topic, topic);
                    assert_eq!(publish.qos, QoS::AtLeastOnce);
                    received = Some(publish.payload.to_vec());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, work)
        .await
        .expect("the TLS round trip hung");
    let _ = client.disconnect().await;
    received.unwrap()
}

#[tokio::test]
async fn server_authenticated_tls_round_trip_and_wrong_ca_is_refused() {
    let pki = Pki::generate();
    let Some(broker) = Mosquitto::start(&pki, false, None) else {
        return;
    };
    let url = broker.url();
    let options = url
        .mqtt_options_tls("tls-ok", KEEP_ALIVE, &pki.tls("ca.pem", None))
        .unwrap();
    let got = round_trip(options, "loopline/test/tls", b"over tls").await;
    assert_eq!(got, b"over tls", "log:\n{}", broker.log_text());

    // The broker's certificate is not signed by the CA we trust: the handshake fails.
    let options = url
        .mqtt_options_tls("tls-wrong-ca", KEEP_ALIVE, &pki.tls("other-ca.pem", None))
        .unwrap();
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    let err = first_error(&mut eventloop).await;
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A plain-TCP client on the TLS port never gets a CONNACK.
    let plain = BrokerUrl::new("127.0.0.1", broker.port).mqtt_options("plain", KEEP_ALIVE);
    let (_client, mut eventloop) = AsyncClient::new(plain, 4);
    let err = first_error(&mut eventloop).await;
    assert!(!err.starts_with("connected"), "{err}");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_trusted_ca() {
    let pki = Pki::generate();
    let Some(broker) = Mosquitto::start(&pki, true, None) else {
        return;
    };
    let url = broker.url();
    let options = url
        .mqtt_options_tls("mtls-ok", KEEP_ALIVE, &pki.tls("ca.pem", Some("client")))
        .unwrap();
    let got = round_trip(options, "loopline/test/mtls", b"mutual").await;
    assert_eq!(got, b"mutual", "log:\n{}", broker.log_text());

    for (client_id, client) in [("mtls-none", None), ("mtls-other", Some("other-client"))] {
        let options = url
            .mqtt_options_tls(client_id, KEEP_ALIVE, &pki.tls("ca.pem", client))
            .unwrap();
        let (_client, mut eventloop) = AsyncClient::new(options, 4);
        let err = first_error(&mut eventloop).await;
        assert!(!err.starts_with("connected"), "{client_id}: {err}");
        assert!(!err.starts_with("no error"), "{client_id}: {err}");
    }
}

#[tokio::test]
async fn username_and_password_over_tls() {
    let pki = Pki::generate();
    let Some(passwd) = [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file()) else {
        announce("TLS password test skipped: mosquitto_passwd is missing");
        return;
    };
    let password_file = pki.path("passwords");
    let status = Command::new(passwd)
        .arg("-c")
        .arg("-b")
        .arg(&password_file)
        .arg("agent-7")
        .arg("s3cr:t@x")
        .status()
        .unwrap();
    assert!(status.success());
    let Some(broker) = Mosquitto::start(&pki, false, Some(&password_file)) else {
        return;
    };
    let tls = pki.tls("ca.pem", None);
    let url: BrokerUrl = format!("mqtts://agent-7:s3cr%3At%40x@127.0.0.1:{}", broker.port)
        .parse()
        .unwrap();
    assert!(!url.to_string().contains("s3cr"));
    let options = url.mqtt_options_tls("pw-ok", KEEP_ALIVE, &tls).unwrap();
    let got = round_trip(options, "loopline/test/pw", b"logged in").await;
    assert_eq!(got, b"logged in", "log:\n{}", broker.log_text());

    let wrong = broker.url().with_credentials("agent-7", "wrong");
    let options = wrong.mqtt_options_tls("pw-bad", KEEP_ALIVE, &tls).unwrap();
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    let err = first_error(&mut eventloop).await;
    assert!(!err.starts_with("connected"), "{err}");
    assert!(
        err.contains("NotAuthorized") || err.contains("BadUserNamePassword"),
        "{err}"
    );
}

#[test]
fn bad_files_are_named_with_what_is_wrong() {
    let pki = Pki::generate();
    let url: BrokerUrl = "mqtts://127.0.0.1:8883".parse().unwrap();
    let not_pem = pki.path("not-pem.txt");
    std::fs::write(&not_pem, "just some text\n").unwrap();
    let missing = pki.path("missing.pem");

    let error = |tls: TlsConfig| {
        url.mqtt_options_tls("c", KEEP_ALIVE, &tls)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            TlsConfig {
                ca_file: Some(missing.clone()),
                ..TlsConfig::default()
            },
            format!("ca_file {}: ", missing.display()),
            "No such file",
        ),
        (
            TlsConfig {
                ca_file: Some(not_pem.clone()),
                ..TlsConfig::default()
            },
            format!("ca_file {}: ", not_pem.display()),
            "no PEM certificate",
        ),
        (
            // A key is not a certificate.
            TlsConfig {
                ca_file: Some(pki.path("client.key")),
                ..TlsConfig::default()
            },
            format!("ca_file {}: ", pki.path("client.key").display()),
            "no PEM certificate",
        ),
        (
            TlsConfig {
                client_cert_file: Some(missing.clone()),
                ..pki.tls("ca.pem", Some("client"))
            },
            format!("client_cert_file {}: ", missing.display()),
            "No such file",
        ),
        (
            TlsConfig {
                client_key_file: Some(missing.clone()),
                ..pki.tls("ca.pem", Some("client"))
            },
            format!("client_key_file {}: ", missing.display()),
            "No such file",
        ),
        (
            TlsConfig {
                client_key_file: Some(pki.path("client.pem")),
                ..pki.tls("ca.pem", Some("client"))
            },
            format!("client_key_file {}: ", pki.path("client.pem").display()),
            "no PEM private key",
        ),
        (
            // The key of another certificate.
            TlsConfig {
                client_key_file: Some(pki.path("other-client.key")),
                ..pki.tls("ca.pem", Some("client"))
            },
            format!(
                "client_key_file {}: ",
                pki.path("other-client.key").display()
            ),
            "unusable with client_cert_file",
        ),
        (
            TlsConfig {
                client_key_file: None,
                ..pki.tls("ca.pem", Some("client"))
            },
            "TLS to broker mqtts://127.0.0.1:8883: ".to_owned(),
            "client_cert_file is set but client_key_file is not",
        ),
    ];
    for (tls, prefix, reason) in cases {
        let err = error(tls);
        assert!(err.starts_with(&prefix), "{prefix:?} | {err}");
        assert!(err.contains(reason), "{reason:?} | {err}");
    }

    // A good configuration builds, with or without a client certificate.
    assert!(
        url.mqtt_options_tls("c", KEEP_ALIVE, &pki.tls("ca.pem", Some("client")))
            .is_ok()
    );
    assert!(
        url.mqtt_options_tls("c", KEEP_ALIVE, &pki.tls("ca.pem", None))
            .is_ok()
    );
}
